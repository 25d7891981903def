"""pavad-bench: detector throughput on the current device, against a matmul peak measured in the same run.

  pavad-bench --model urdmu --batch-size 8 --segments 200 --feature-dim 1024 --steps 20
  pavad-bench --model darm --batch-size 64 --segments 200 --steps 50 --members 8 --json bench.json
  pavad-bench --model rtfm --steps 3    # GV-VAD's RTFM at its paper's shapes: B = 32 + 32, 10 crops, T = 64, D = 768
  pavad-bench --model lap --steps 3     # LAP, also with its caption branch (E = 768) and 26 prompts

Inputs are random; the model is UR-DMU's default architecture (hidden 512, 4 heads, 60 + 60
memory slots) unless flags say otherwise. B = --batch-size means B/2 normal + B/2 abnormal
videos of T = --segments segments; `darm` (PA-VAD's full loss) adds B/2 pseudo-normal videos for
the domain-alignment term, so it feeds 1.5 B rows. Reported (docs/sweeps.md explains each):

  compile_s              lowering + compiling the train step
  train_step_ms          median wall time of one optimiser update (a dispatch / steps per dispatch)
  train_segments_per_s   rows x T / train_step_ms
  infer_segments_per_s   test-mode scoring of B videos of T segments
  flops_per_step         XLA's cost analysis of the compiled train step, per update
  achieved_flops_per_s   flops_per_step / train_step_ms
  matmul_peak_flops_per_s  a large float32 matmul timed the same way on the same device
  fraction_of_peak       achieved / peak
  matmul_only_ms         the train step's own matmuls (every dot_general of one update, same shapes
                         and dimension numbers) alone in one program: what the step would take if
                         everything else were free
  matmul_only_fraction_of_peak  their FLOPs / matmul_only_ms / peak: the ceiling of fraction_of_peak
                         that XLA's matmul kernels allow for this model on this device
                         (single-device runs; with several data-parallel devices XLA counts
                         per-device FLOPs and these figures are n/a)
  step_memory_gb         XLA's memory estimate of the compiled train step (arguments + temporaries +
                         outputs, per device)
  sweep (--members M)    member-steps per second of the vmapped sweep step for 1, 2, 4, ..., M members,
                         each with XLA's memory estimate; from those, the memory per member and how
                         many members fit in --device-memory-gb (default: the device's own memory)
  torch (--torch-baseline)  the PyTorch re-implementation's step (benchmarks/torch_step.py in a
                         subprocess: pavad_jax never imports torch), each torch step run right after a
                         timed JAX step so both see the same load of the machine; torch_over_jax is
                         the median of the pairs' ratios torch ms / JAX ms, with their quartiles
  input (--data DIR)     training batches/s of the grain pipeline and of the device-resident sampler
                         on that dataset's train/ split at this batch shape, beside the step's steps/s:
                         whether the input or the step bounds training (e.g. on pavad-data synthetic
                         --size ucf, UCF-Crime's shapes)

The same code runs on CPU, GPU and TPU: only jax's own device choice differs.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from pavad_jax import atomic, distributed, engine, evaluate, host_memory, train
from pavad_jax.config_base import base_config, default_loss_config, model_defaults
from pavad_jax.data import pipeline
from pavad_jax.models import registry

MODELS = ("urdmu", "darm", "rtfm", "lap")
# Each detector's paper shapes (the defaults of --batch-size, --segments, --feature-dim, --crops):
# UR-DMU's benchmark rows; GV-VAD's RTFM and LAP runs (runGV.sh: 32 + 32 videos, 10 crops, T = 64, CLIP-L).
PAPER_SHAPES = {"urdmu": (8, 200, 1024, 1), "darm": (8, 200, 1024, 1), "rtfm": (64, 64, 768, 10),
                "lap": (64, 64, 768, 10)}


def bench_config(model: str, batch_size: int, segments: int, feature_dim: int, *, hidden: int = 512,
                 slots: int = 60, steps_per_dispatch: int = 1, crops: int = 1):
    """A training config for the benchmark: UR-DMU's sizes, `darm` adding the DARM losses; `rtfm`
    and `lap` GV-VAD's detectors with the official loss (SSLS official form; LAP's learnable λ,
    a random prompt bank and caption width 768)."""
    if model not in MODELS:
        raise ValueError(f"--model must be one of {MODELS}, got {model!r}")
    if batch_size < 2 or batch_size % 2:
        raise ValueError(f"--batch-size must be even and >= 2 (B/2 normal + B/2 abnormal), got {batch_size}")
    if model in ("rtfm", "lap"):
        return detector_bench_config(model, batch_size, segments, feature_dim, crops, steps_per_dispatch)
    config = base_config()
    config.model.feature_dim = feature_dim
    config.model.hidden = hidden
    config.model.mlp_dim = hidden
    config.model.a_slots = config.model.n_slots = slots
    config.loss = default_loss_config("pavad" if model == "darm" else "urdmu")
    half = batch_size // 2
    config.data.batch.normal = config.data.batch.abnormal = half
    config.data.batch.pseudo_normal = half if model == "darm" else 0
    config.data.segments = segments
    config.train.steps_per_dispatch = steps_per_dispatch
    return config


def detector_bench_config(model: str, batch_size: int, segments: int, feature_dim: int, crops: int,
                          steps_per_dispatch: int = 1):
    """RTFM or LAP as configs/gvvad_{rtfm,lap}_ucf.py train them, at the given shapes."""
    config = base_config()
    defaults = model_defaults(model)
    config.model, config.loss = defaults.model, defaults.loss
    config.model.feature_dim = feature_dim
    config.data.segments = segments
    config.data.sample_unit = "all_crops" if crops > 1 else "crop"
    config.data.crops = crops  # read by random_batches only
    config.data.batch.normal = config.data.batch.abnormal = batch_size // 2
    config.data.batch.pseudo_normal = 0
    config.loss.gv.mode = "official"
    config.loss.quirks.score_view_32 = segments % 32 == 0
    if model == "rtfm":
        config.loss.sparsity_smoothness = False  # GV-VAD's RTFM runs
    else:
        config.loss.gv.learnable = True
        bank = pathlib.Path(tempfile.mkdtemp(prefix="pavad-bench-")) / registry.PROMPT_BANK_FILE
        np.save(bank, np.random.default_rng(0).normal(size=(config.model.prompts, config.model.text_dim)))
        config.model.prompt_bank = str(bank)
    config.optim.learning_rate, config.optim.weight_decay = 1e-3, 5e-3
    config.train.steps_per_dispatch = steps_per_dispatch
    return config


def random_batches(config, key, steps: int) -> dict:
    """`steps` stacked random training batches (k, rows, T, D) (or (k, rows, crops, T, D) with
    data.crops > 1) in the trainer's layout, with the detector's per-segment fields."""
    counts = [config.data.batch.normal, config.data.batch.abnormal, config.data.batch.pseudo_normal]
    rows = sum(counts)
    stream = np.repeat(np.arange(3), counts).astype(np.int32)
    crops = int(config.data.get("crops", 1))
    shape = (steps, rows, *((crops,) if crops > 1 else ()), config.data.segments, config.model.feature_dim)
    features = jax.random.uniform(key, shape, jnp.float32)
    label = np.broadcast_to((stream == 1).astype(np.float32), (steps, rows))
    extras = {name: jax.random.normal(jax.random.fold_in(key, 1), (steps, rows, config.data.segments,
                                                                   config.model.text_dim), jnp.float32)
              for name in registry.extra_fields(config)}
    return {"features": features, "label": jnp.asarray(label), "synthetic": jnp.asarray(label),
            "stream": jnp.asarray(np.broadcast_to(stream, (steps, rows))), **extras}


def time_calls(fn, args_fn, calls: int, desc: str, between: Callable[[], Any] | None = None) -> list[float]:
    """Wall seconds of `calls` calls of fn(*args_fn()), each waited for (the first, warm-up, dropped);
    `between()` runs untimed after each timed call (an interleaved baseline)."""
    out = fn(*args_fn())
    jax.block_until_ready(out)
    times = []
    for _ in tqdm(range(calls), desc=desc, leave=False, unit="call"):
        args = args_fn()
        start = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
        if between is not None:
            between()
    return times


def members_that_fit(rows: list[dict], memory_gb: float) -> dict:
    """Memory per member and shared memory (a least-squares line through the sweep rows'
    estimates, per device), and how many members fit in `memory_gb` per device."""
    points = [(row["members"] / row["devices"], row["memory_gb"]) for row in rows if row.get("memory_gb")]
    if len({x for x, _ in points}) < 2:  # e.g. 1 and 2 members on 8 devices: one member per device both times
        return {"note": "needs two sweep rows with different members per device (e.g. --members 1,16 on 8 devices)"}
    x, y = (np.asarray(v, np.float64) for v in zip(*points))
    slope = max(float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()), 1e-9)
    shared = float(y.mean() - slope * x.mean())
    fit = int(max(0.0, (memory_gb - max(shared, 0.0)) / slope + 1e-6))  # + 1e-6: exact fits are not lost to rounding
    return {"memory_per_member_gb": slope, "shared_memory_gb": float(shared), "device_memory_gb": memory_gb,
            "members_fit_per_device": fit}


class TorchBaseline:
    """The PyTorch re-implementation's step (benchmarks/torch_step.py --serve) in a subprocess, run
    on request: `run(k)` times k steps there. pavad-bench calls it between the JAX step's timed
    calls, so each pair of figures sees the same load of the machine (on a shared host the speed
    of both drifts by up to 2x within a minute)."""

    SETTLE_S = 0.01  # before and after each request: the other process's spinning threads go idle

    def __init__(self, batch_size: int, segments: int, feature_dim: int):
        self.script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "torch_step.py"
        if not self.script.is_file():
            raise SystemExit(f"--torch-baseline needs {self.script} (a source checkout) and torch installed")
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, str(self.script), "--serve", "--batch-size", str(batch_size), "--segments",
             str(segments), "--feature-dim", str(feature_dim)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.settings = self._reply()  # once built and warmed up
        self.step_s: list[float] = []

    def _reply(self):
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.stderr.seek(0)
            raise SystemExit(f"--torch-baseline: {self.script.name} failed:\n{self.stderr.read()[-2000:]}")
        return json.loads(line)

    def run(self, steps: int) -> list[float]:
        """Wall seconds of `steps` reference steps, each timed in the subprocess."""
        time.sleep(self.SETTLE_S)
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        times = self._reply()
        time.sleep(self.SETTLE_S)
        self.step_s.extend(times)
        return times

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.stderr.close()

    def __enter__(self) -> "TorchBaseline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def torch_comparison(settings: dict, torch_step_s: list[float], jax_step_ms: list[float], k: int) -> dict:
    """The interleaved timings as figures: each JAX dispatch (k steps, `jax_step_ms` per step) against
    the k torch steps run right after it; the ratio is torch / JAX per pair, median and quartiles."""
    torch_ms = [1e3 * statistics.mean(torch_step_s[i * k:(i + 1) * k]) for i in range(len(jax_step_ms))]
    ratios = sorted(t / j for t, j in zip(torch_ms, jax_step_ms))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"version": settings["torch"], "threads": settings["threads"], "pairs": len(ratios),
            "step_ms": statistics.median(torch_ms), "step_ms_all": torch_ms,
            "median_ratio": statistics.median(ratios), "ratio_quartiles": [quartiles[0], quartiles[2]]}


def flops_of(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (None where the backend gives none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def matmul_peak(calls: int = 5, min_seconds: float = 0.05, max_n: int = 8192) -> dict:
    """FLOP/s of an n x n float32 matmul, n doubled from 512 until one call takes >= min_seconds."""
    n = 512
    while True:
        a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32) for i in (0, 1))
        matmul = jax.jit(jnp.dot)
        times = time_calls(matmul, lambda: (a, b), calls, f"matmul {n}")
        median = statistics.median(times)
        if median >= min_seconds or n >= max_n:
            return {"n": n, "seconds": median, "flops_per_s": 2.0 * n**3 / median}
        n *= 2


def _sub_jaxprs(params: dict):
    """The jaxprs nested in an equation's params (pjit, scan, while, cond, custom_jvp/vjp)."""
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def step_matmuls(fn, *args) -> list[tuple]:
    """Every dot_general that fn(*args) runs, as (lhs aval, rhs aval, params), once per execution."""
    found = []

    def walk(jaxpr, times: int):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.extend([(eqn.invars[0].aval, eqn.invars[1].aval, eqn.params)] * times)
            inner = times * eqn.params["length"] if eqn.primitive.name == "scan" else times
            for sub in _sub_jaxprs(eqn.params):
                walk(sub, inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
    return found


def bench_matmuls_only(matmuls: list[tuple], steps: int) -> dict:
    """Time the given matmuls alone, all in one jitted program on ones of their shapes."""
    operands = [(jnp.ones(lhs.shape, lhs.dtype), jnp.ones(rhs.shape, rhs.dtype)) for lhs, rhs, _ in matmuls]

    def run_all(operands):
        return [jax.lax.dot_general(lhs, rhs, params["dimension_numbers"], precision=params["precision"],
                                    preferred_element_type=params["preferred_element_type"])
                for (lhs, rhs), (_, _, params) in zip(operands, matmuls)]

    compiled = jax.jit(run_all).lower(operands).compile()
    seconds = statistics.median(time_calls(compiled, lambda: (operands,), steps, "matmuls only"))
    return {"matmul_count": len(matmuls), "matmul_flops_per_step": flops_of(compiled),
            "matmul_only_ms": 1e3 * seconds}


def member_state(config, members: int, mesh):
    """The engine's TrainState for `members` copies of one freshly built model, on `mesh`."""
    template = registry.build(config, seed=0)
    graphdef = nnx.split(template, nnx.Param, ...)[0]
    member = train.init_member(config, template)
    return graphdef, engine.put_state(engine.stack_members([member] * members), mesh)


def compiled_step(config, members: int, mesh, batches) -> dict:
    """The engine's step (what pavad-train and pavad-sweep run) for `members` members, compiled."""
    graphdef, state = member_state(config, members, mesh)
    update = engine.make_update(train.detector_loss_fn(graphdef, config), engine.make_optimizer(config.optim))
    step = engine.jit_step(engine.make_step(update, int(config.train.steps_per_dispatch), mesh=mesh), mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batches).compile()
    return {"graphdef": graphdef, "state": state, "update": update, "compiled": compiled,
            "compile_s": time.perf_counter() - start, "memory": evaluate.program_bytes(compiled)}


def time_step(step: dict, batches, steps: int, desc: str, between: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of each of `steps` dispatches of a compiled step (see time_calls); step["state"] ends
    as the last state."""
    def run(batches):
        step["state"], terms = step["compiled"](step["state"], batches)
        return terms

    return time_calls(run, lambda: (batches,), steps, desc, between)


def bench_train(config, steps: int, between: Callable[[], Any] | None = None) -> dict:
    """Compile time, step time, FLOPs and memory of the engine's one-member step on random batches.

    As pavad-train runs it: the batch split over the "data" axis of every device that divides it.
    `between()` runs after each timed dispatch (see time_calls).
    """
    k = int(config.train.steps_per_dispatch)
    rows = sum(config.data.batch.values())
    devices = distributed.largest_divisor(rows, jax.device_count())
    mesh = distributed.make_mesh(1, devices)
    batches = jax.device_put(random_batches(config, jax.random.key(1), k), distributed.stacked_batch_sharded(mesh))
    step = compiled_step(config, 1, mesh, batches)
    step_times = [t / k for t in time_step(step, batches, steps, "train step", between)]
    step_s = statistics.median(step_times)
    # XLA's cost analysis counts a while loop's body once, so the FLOPs of one update come from
    # a one-step program (the scan of k steps would report those same FLOPs, not k times them).
    one_step_fn = engine.make_step(step["update"], 1)
    one_batch = jax.tree.map(lambda x: x[:1], batches)
    flops = flops_of(jax.jit(one_step_fn).lower(step["state"], one_batch).compile())
    # The jaxpr has the global shapes; XLA's counts above are per device. So: single-device runs only.
    matmuls = (bench_matmuls_only(step_matmuls(one_step_fn, step["state"], one_batch), steps)
               if devices == 1 else {"matmul_count": None, "matmul_flops_per_step": None, "matmul_only_ms": None})
    return {"data_devices": devices, "compile_s": step["compile_s"], "train_step_ms": 1e3 * step_s,
            "train_step_ms_all": [1e3 * t for t in step_times],
            "step_memory_gb": None if step["memory"] is None else step["memory"] / 2**30,
            "batch_gb": sum(x.nbytes for x in jax.tree.leaves(batches)) / 2**30,
            "train_segments_per_s": rows * config.data.segments / step_s,
            "flops_per_step": flops,
            "achieved_flops_per_s": None if flops is None else flops / step_s,
            **matmuls,
            "graphdef": step["graphdef"], "params": step["state"].params, "rest": step["state"].rest}


def input_data(config, data_dir: str, *, abnormal_source: str = "pseudo", verify: bool = True) -> tuple:
    """(data config, training ShardSet) of `data_dir` at the benchmark's batch shape, abnormal rows
    from `abnormal_source` videos; ValueError naming the folder when it has no training split, its
    features are not the model's width or a stream of the batch has no videos."""
    data = config.data.copy_and_resolve_references()
    data.dir, data.abnormal_source = str(data_dir), abnormal_source
    try:
        shards = pipeline.open_split(data, data.train_split, verify=verify)
    except FileNotFoundError as e:
        raise ValueError(f"--data {data_dir}: {e}") from None
    if shards.feature_dim != config.model.feature_dim:
        raise ValueError(f"--data {data_dir}: its training features are {shards.feature_dim}-d, the benchmark's "
                         f"model reads {config.model.feature_dim}-d (--feature-dim)")
    pipeline.select_streams(shards, data)  # every stream of the batch has videos (or a ValueError naming them)
    return data, shards


def bench_input(config, data_dir: str, steps: int, table_dtype: str = "float32",
                abnormal_source: str = "pseudo") -> dict:
    """Training batches per second of both input paths on a dataset, at the benchmark's batch shape:
    the grain pipeline (reads and resamples on host threads, as pavad-train streams) and the
    device-resident sampler (the resampled table on the device, one jitted gather per step) when
    its table fits data.device_budget_gb."""
    data, shards = input_data(config, data_dir, abnormal_source=abnormal_source)
    data.table_dtype = table_dtype
    iterator = pipeline.make_train_iterator(data, shards=shards)
    result = {"input_data": str(data_dir), "input_videos": len(shards), "input_table_dtype": table_dtype,
              "input_grain_batches_per_s": 1.0 / pipeline.time_per_call(lambda: next(iterator), steps)}
    data.device_resident = "auto"
    result["input_resident_budget_gb"] = pipeline.device_budget_bytes(data) / 2**30
    result["input_resident_table_gb"] = pipeline.resampled_table_bytes(
        shards, pipeline.select_streams(shards, data), data.segments, pipeline.table_dtype(data)) / 2**30
    result["input_resident_batches_per_s"] = None
    if pipeline.use_device_resident(data, shards):
        sampler = pipeline.DeviceResidentSampler.from_config(data, shards=shards)
        sample = jax.jit(lambda s, step: s.sample(step))
        step_numbers = iter(range(steps + 1))
        result["input_resident_batches_per_s"] = 1.0 / pipeline.time_per_call(
            lambda: sample(sampler, next(step_numbers)), steps)
    return result


def bench_infer(graphdef, params, rest, config, steps: int) -> float:
    """Segments per second of test-mode scoring of B videos (normal + abnormal rows) of T segments,
    with the evaluator's scorer (full float32 precision); params/rest with a member axis of 1."""
    rows = config.data.batch.normal + config.data.batch.abnormal
    batch = jax.tree.map(lambda x: x[0, :rows], random_batches(config, jax.random.key(2), 1))
    segment_ids = jnp.ones((rows, config.data.segments), jnp.int32)
    scorer = evaluate.Scorer(graphdef, config.train.eval_precision, int(config.data.get("eval_crop_chunk", 0)))
    extras = {name: batch[name] for name in registry.extra_fields(config)}
    times = time_calls(lambda *a: scorer(*a, extras=extras), lambda: (params, rest, batch["features"], segment_ids),
                       steps, "inference")
    return rows * config.data.segments / statistics.median(times)


def member_counts(spec: str | int) -> list[int]:
    """--members: "M" -> 1, 2, 4, ..., M; "1,8,64" -> exactly those."""
    text = str(spec)
    if "," in text:
        counts = [int(v) for v in text.split(",")]
    else:
        top, counts, m = int(text), [], 1
        while m < top:
            counts.append(m)
            m *= 2
        counts.append(top)
    if any(c < 1 for c in counts):
        raise ValueError(f"--members must be positive counts, got {spec!r}")
    return counts


def bench_sweep(config, members_spec: str | int, steps: int, device_memory: int | None = None) -> list[dict]:
    """Member-steps per second of the vmapped step for each count of `member_counts(members_spec)`.

    A count whose compiled step XLA estimates above `device_memory` bytes per device is not run
    (its row says so and still gives the estimate).
    """
    k = int(config.train.steps_per_dispatch)
    results = []
    for members in member_counts(members_spec):
        mesh = distributed.make_mesh(distributed.largest_divisor(members, jax.device_count()), 1)
        batches = jax.device_put(random_batches(config, jax.random.key(3), k), distributed.stacked_batch_sharded(mesh))
        step = compiled_step(config, members, mesh, batches)
        memory = step["memory"]
        row = {"members": members, "devices": mesh.size, "compile_s": step["compile_s"],
               "memory_gb": None if memory is None else memory / 2**30}
        if memory is not None and device_memory is not None and memory > device_memory:
            results.append(row | {"skipped": f"needs {memory / 2**30:.1f} GiB per device, "
                                              f"over {device_memory / 2**30:.1f} GiB"})
            continue
        median = statistics.median(time_step(step, batches, steps, f"sweep x{members}"))
        results.append(row | {"dispatch_ms": 1e3 * median, "member_steps_per_s": members * k / median})
    return results


def run_benchmark(model: str, batch_size: int, segments: int, feature_dim: int, steps: int, *,
                  members: str | int = 0, hidden: int = 512, slots: int = 60, steps_per_dispatch: int = 1,
                  torch_baseline_steps: int = 0, device_memory_gb: float | None = None,
                  compute_dtype: str = "float32", crops: int = 1, data_dir: str | None = None,
                  table_dtype: str = "float32", abnormal_source: str = "pseudo") -> dict:
    """Every figure of the benchmark as a JSON-able dict (torch_baseline_steps > 0: also the torch step).

    members: "M" (1, 2, 4, ..., M) or "1,8,64" (those counts); 0 = no sweep. data_dir: also time
    the training input paths on that dataset (bench_input: the device table stored as `table_dtype`,
    abnormal rows from `abnormal_source` videos).
    """
    config = bench_config(model, batch_size, segments, feature_dim, hidden=hidden, slots=slots,
                          steps_per_dispatch=steps_per_dispatch, crops=crops)
    if model in ("urdmu", "darm"):
        config.model.compute_dtype = compute_dtype
    device = jax.devices()[0]
    result = {"model": model, "batch_size": batch_size, "rows": sum(config.data.batch.values()),
              "segments": segments, "feature_dim": feature_dim, "crops": crops,
              "hidden": hidden if model in ("urdmu", "darm") else None,
              "slots": slots if model in ("urdmu", "darm") else None,
              "steps": steps, "steps_per_dispatch": steps_per_dispatch, "compute_dtype": compute_dtype,
              "platform": device.platform,
              "device_kind": device.device_kind, "device_count": jax.device_count(), "jax": jax.__version__}
    if torch_baseline_steps:
        k = int(config.train.steps_per_dispatch)
        with TorchBaseline(batch_size, segments, feature_dim) as torch_step:
            train_result = bench_train(config, steps, between=lambda: torch_step.run(k))
        result["torch"] = torch_comparison(torch_step.settings, torch_step.step_s, train_result["train_step_ms_all"], k)
        result["torch_over_jax"] = result["torch"]["median_ratio"]
    else:
        train_result = bench_train(config, steps)
    graphdef, params, rest = (train_result.pop(k) for k in ("graphdef", "params", "rest"))
    result |= train_result
    result["infer_segments_per_s"] = bench_infer(graphdef, params, rest, config, steps)
    if data_dir:
        result |= bench_input(config, data_dir, steps, table_dtype, abnormal_source)
    peak = matmul_peak()
    result["matmul_n"], result["matmul_peak_flops_per_s"] = peak["n"], peak["flops_per_s"]
    achieved = result["achieved_flops_per_s"]
    result["fraction_of_peak"] = None if achieved is None else achieved / peak["flops_per_s"]
    matmul_flops = result["matmul_flops_per_step"]
    result["matmul_only_fraction_of_peak"] = (
        None if not matmul_flops else matmul_flops / (result["matmul_only_ms"] / 1e3) / peak["flops_per_s"])
    if members:
        total = pipeline.device_memory_bytes() if device_memory_gb is None else int(device_memory_gb * 2**30)
        result["sweep"] = bench_sweep(config, members, steps, device_memory=total)
        if total:
            result["member_memory"] = members_that_fit(result["sweep"], total / 2**30)
    return result


def format_report(result: dict) -> str:
    """The figures as aligned text lines."""
    def g(value, scale=1.0, fmt="{:.3g}"):
        return "n/a" if value is None else fmt.format(value / scale)

    lines = [
        f"{result['model']} on {result['platform']} ({result['device_kind']}): B={result['batch_size']} "
        f"({result['rows']} rows), {result.get('crops', 1)} crop(s), T={result['segments']}, "
        f"D={result['feature_dim']}, "
        + (f"hidden={result['hidden']}, {result['slots']} slots, " if result.get("hidden") else "")
        + f"{result['steps_per_dispatch']} step(s)/dispatch, {result['compute_dtype']} compute",
        f"  data-parallel devices {result['data_devices']}",
        f"  compile_s             {result['compile_s']:.2f}",
        f"  train_step_ms         {result['train_step_ms']:.2f}",
        f"  train_segments_per_s  {result['train_segments_per_s']:.0f}",
        f"  infer_segments_per_s  {result['infer_segments_per_s']:.0f}",
        f"  flops_per_step        {g(result['flops_per_step'], 1e9)} GFLOP",
        f"  achieved              {g(result['achieved_flops_per_s'], 1e9)} GFLOP/s",
        f"  matmul peak           {result['matmul_peak_flops_per_s'] / 1e9:.3g} GFLOP/s "
        f"(f32 {result['matmul_n']}x{result['matmul_n']})",
        f"  fraction_of_peak      {g(result['fraction_of_peak'], 0.01, '{:.1f}')} %",
    ]
    if result["matmul_only_ms"] is None:
        lines.append("  matmuls only          n/a (measured on single-device runs only)")
    else:
        lines.append(f"  matmuls only          {result['matmul_only_ms']:.2f} ms for the step's {result['matmul_count']} "
                     f"matmuls ({g(result['matmul_flops_per_step'], 1e9)} GFLOP), "
                     f"{g(result['matmul_only_fraction_of_peak'], 0.01, '{:.1f}')} % of peak")
    lines.append(f"  step_memory_gb        {g(result['step_memory_gb'], 1, '{:.3f}')} (XLA's estimate, per device)")
    if "input_grain_batches_per_s" in result:
        lines += input_lines(result)
    for row in result.get("sweep", []):
        head = f"  sweep {row['members']:>3d} members on {row['devices']} device(s): "
        if "skipped" in row:
            lines.append(head + f"not run: {row['skipped']}")
            continue
        lines.append(head + f"{row['member_steps_per_s']:.2f} member-steps/s ({row['dispatch_ms']:.1f} ms/dispatch, "
                     f"compile {row['compile_s']:.1f} s, {g(row['memory_gb'], 1, '{:.3f}')} GiB per device)")
    fit = result.get("member_memory")
    if fit and "note" in fit:
        lines.append(f"  memory per member     n/a: {fit['note']}")
    elif fit:
        lines.append(f"  memory per member     {fit['memory_per_member_gb']:.3f} GiB (+ {fit['shared_memory_gb']:.3f} "
                     f"shared): {fit['members_fit_per_device']} members fit in {fit['device_memory_gb']:.1f} GiB "
                     f"per device")
    if "torch" in result:
        t = result["torch"]
        low, high = t["ratio_quartiles"]
        lines.append(f"  torch step            {t['step_ms']:.2f} ms (torch {t['version']}, {t['threads']} threads; "
                     f"alternated with the JAX step, {t['pairs']} pairs): JAX is {result['torch_over_jax']:.2f}x "
                     f"faster (median of the pairs' ratios; quartiles {low:.2f}-{high:.2f})")
    return "\n".join(lines)


def input_lines(result: dict) -> list[str]:
    """The input paths' batches/s beside the step's, and which of them bounds a training step."""
    steps_per_s = 1e3 / result["train_step_ms"]
    lines = [f"  input, {result['input_data']} ({result['input_videos']} training videos):",
             f"    train steps/s       {steps_per_s:.2f}"]
    paths = {"grain": result["input_grain_batches_per_s"], "device-resident": result["input_resident_batches_per_s"]}
    for name, rate in paths.items():
        if rate is None:
            halve = "; --table-dtype bfloat16 halves it" if result.get("input_table_dtype") == "float32" else ""
            lines.append(f"    {name:<19s} n/a: its table ({result['input_resident_table_gb']:.2f} GiB) is over the "
                         f"budget of {result['input_resident_budget_gb']:.2f} GiB (data.device_budget_gb; on a "
                         f"CPU at most a quarter of the RAM{halve})")
            continue
        verdict = "the step is the bottleneck" if rate >= steps_per_s else "the input is the bottleneck"
        table = f", table {result['input_resident_table_gb']:.2f} GiB" if name == "device-resident" else ""
        lines.append(f"    {name:<19s} {rate:.2f} batches/s{table}: {verdict}")
    return lines


def main(argv=None) -> None:
    host_memory.reuse_freed_memory()  # before JAX starts its backend
    parser = argparse.ArgumentParser(prog="pavad-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="urdmu",
                        help="urdmu: UR-DMU's loss; darm: PA-VAD's (UR-DMU + L_DA + L_upd, B/2 pseudo-normal rows "
                             "more); rtfm, lap: GV-VAD's detectors with the official loss")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="B: B/2 normal + B/2 abnormal videos (default: the model's paper shape, 8 for UR-DMU, "
                             "64 for RTFM and LAP)")
    parser.add_argument("--segments", type=int, default=None, help="T, segments per video (default 200; RTFM/LAP 64)")
    parser.add_argument("--feature-dim", type=int, default=None,
                        help="D, feature size (default 1024, I3D; RTFM/LAP 768, CLIP-L)")
    parser.add_argument("--crops", type=int, default=None,
                        help="crops per video in a row (RTFM/LAP train on all 10; default 1 for UR-DMU)")
    parser.add_argument("--hidden", type=int, default=512, help="UR-DMU's hidden size (default 512)")
    parser.add_argument("--slots", type=int, default=60, help="memory slots per bank (default 60)")
    parser.add_argument("--steps", type=int, default=20, help="timed calls of each program (median reported)")
    parser.add_argument("--steps-per-dispatch", type=int, default=1,
                        help="optimiser updates per jitted call (lax.scan), as train.steps_per_dispatch")
    parser.add_argument("--members", default="0",
                        help="also time the vmapped sweep step: M for 1, 2, 4, ..., M members, or a list "
                             "such as 1,8,64 (a count over the device's memory is estimated, not run)")
    parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="model.compute_dtype of the benchmarked step (matmul operands)")
    parser.add_argument("--torch-baseline", action="store_true",
                        help="also time the PyTorch re-implementation's step (benchmarks/torch_step.py in a "
                             "subprocess, alternated with the JAX step's timed calls; needs torch and a "
                             "source checkout)")
    parser.add_argument("--device-memory-gb", type=float, default=None,
                        help="with --members: memory per device to fit members into (default: the device's own)")
    parser.add_argument("--data", default=None,
                        help="a dataset folder (e.g. pavad-data synthetic --size ucf): also time both training "
                             "input paths on its train/ split at this batch shape, beside the step")
    parser.add_argument("--table-dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="with --data: data.table_dtype, the storage of the device-resident table")
    parser.add_argument("--abnormal-source", default="pseudo", choices=("pseudo", "real"),
                        help="with --data: data.abnormal_source, the videos of the abnormal rows (pseudo for "
                             "PA-VAD's data; real for UR-DMU's, e.g. pavad-data synthetic --size ucf)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    for name, default in zip(("batch_size", "segments", "feature_dim", "crops"), PAPER_SHAPES[args.model]):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.crops > 1 and args.model in ("urdmu", "darm"):
        parser.error("--crops: UR-DMU trains on one crop per row")
    for name in ("segments", "feature_dim", "hidden", "slots", "steps", "steps_per_dispatch", "crops"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.members != "0":
        try:
            member_counts(args.members)
        except ValueError:
            parser.error(f"--members must be a count or a comma-separated list of counts, got {args.members!r}")
    try:
        config = bench_config(args.model, args.batch_size, args.segments, args.feature_dim)
        if args.data:
            input_data(config, args.data, abnormal_source=args.abnormal_source, verify=False)
    except ValueError as e:
        parser.error(str(e))
    if args.torch_baseline and (args.model, args.hidden, args.slots) != ("urdmu", 512, 60):
        parser.error("--torch-baseline times the reference UR-DMU (hidden 512, 60 slots, its own loss): "
                     "use --model urdmu with the default --hidden and --slots")
    result = run_benchmark(args.model, args.batch_size, args.segments, args.feature_dim, args.steps,
                           members=0 if args.members == "0" else args.members, hidden=args.hidden, slots=args.slots,
                           steps_per_dispatch=args.steps_per_dispatch,
                           torch_baseline_steps=args.steps if args.torch_baseline else 0,
                           device_memory_gb=args.device_memory_gb, compute_dtype=args.compute_dtype,
                           crops=args.crops, data_dir=args.data, table_dtype=args.table_dtype,
                           abnormal_source=args.abnormal_source)
    print(format_report(result))
    if args.json:
        atomic.write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
