"""pavad-bench: detector throughput on the current device, against a matmul peak measured in the same run.

  pavad-bench --model urdmu --batch-size 8 --segments 200 --feature-dim 1024 --steps 20
  pavad-bench --model darm --batch-size 64 --segments 200 --steps 50 --members 8 --json bench.json

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
  sweep (--members M)    member-steps per second of the vmapped sweep step for 1, 2, 4, ..., M members

The same code runs on CPU, GPU and TPU: only jax's own device choice differs.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from pavad_jax import atomic, distributed, engine, train
from pavad_jax.config_base import base_config, default_loss_config
from pavad_jax.evaluate import make_scorer
from pavad_jax.models.detector import build_detector


def bench_config(model: str, batch_size: int, segments: int, feature_dim: int, *, hidden: int = 512,
                 slots: int = 60, steps_per_dispatch: int = 1):
    """A training config for the benchmark: UR-DMU's sizes, `darm` adding the DARM losses."""
    if model not in ("urdmu", "darm"):
        raise ValueError(f"--model must be urdmu or darm, got {model!r}")
    if batch_size < 2 or batch_size % 2:
        raise ValueError(f"--batch-size must be even and >= 2 (B/2 normal + B/2 abnormal), got {batch_size}")
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


def random_batches(config, key, steps: int) -> dict:
    """`steps` stacked random training batches (k, rows, T, D) in the trainer's layout."""
    counts = [config.data.batch.normal, config.data.batch.abnormal, config.data.batch.pseudo_normal]
    rows = sum(counts)
    stream = np.repeat(np.arange(3), counts).astype(np.int32)
    features = jax.random.uniform(key, (steps, rows, config.data.segments, config.model.feature_dim), jnp.float32)
    label = np.broadcast_to((stream == 1).astype(np.float32), (steps, rows))
    return {"features": features, "label": jnp.asarray(label), "synthetic": jnp.asarray(label),
            "stream": jnp.asarray(np.broadcast_to(stream, (steps, rows)))}


def time_calls(fn, args_fn, calls: int, desc: str) -> list[float]:
    """Wall seconds of `calls` calls of fn(*args_fn()), each waited for (the first, warm-up, dropped)."""
    out = fn(*args_fn())
    jax.block_until_ready(out)
    times = []
    for _ in tqdm(range(calls), desc=desc, leave=False, unit="call"):
        args = args_fn()
        start = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    return times


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
    template = build_detector(config.model, config.loss, seed=0)
    graphdef = nnx.split(template, nnx.Param, ...)[0]
    member = train.init_member(config, template)
    return graphdef, engine.put_state(engine.stack_members([member] * members), mesh)


def timed_step(config, members: int, mesh, steps: int, desc: str) -> dict:
    """Compile and time the engine's step (what pavad-train and pavad-sweep run) on random batches."""
    graphdef, state = member_state(config, members, mesh)
    k = int(config.train.steps_per_dispatch)
    update = engine.make_update(train.detector_loss_fn(graphdef, config), engine.make_optimizer(config.optim))
    step = engine.jit_step(engine.make_step(update, k, mesh=mesh), mesh)
    batches = jax.device_put(random_batches(config, jax.random.key(1), k), distributed.stacked_batch_sharded(mesh))
    start = time.perf_counter()
    compiled = step.lower(state, batches).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run(batches):
        holder["state"], terms = compiled(holder["state"], batches)
        return terms

    seconds = statistics.median(time_calls(run, lambda: (batches,), steps, desc))
    return {"graphdef": graphdef, "state": holder["state"], "update": update, "batches": batches,
            "compile_s": compile_s, "dispatch_s": seconds, "compiled": compiled}


def bench_train(config, steps: int) -> dict:
    """Compile time, step time, FLOPs of the engine's one-member step on random batches.

    As pavad-train runs it: the batch split over the "data" axis of every device that divides it.
    """
    k = int(config.train.steps_per_dispatch)
    rows = sum(config.data.batch.values())
    devices = distributed.largest_divisor(rows, jax.device_count())
    mesh = distributed.make_mesh(1, devices)
    timed = timed_step(config, 1, mesh, steps, "train step")
    step_s = timed["dispatch_s"] / k
    # XLA's cost analysis counts a while loop's body once, so the FLOPs of one update come from
    # a one-step program (the scan of k steps would report those same FLOPs, not k times them).
    one_step_fn = engine.make_step(timed["update"], 1)
    one_batch = jax.tree.map(lambda x: x[:1], timed["batches"])
    flops = flops_of(jax.jit(one_step_fn).lower(timed["state"], one_batch).compile())
    # The jaxpr has the global shapes; XLA's counts above are per device. So: single-device runs only.
    matmuls = (bench_matmuls_only(step_matmuls(one_step_fn, timed["state"], one_batch), steps)
               if devices == 1 else {"matmul_count": None, "matmul_flops_per_step": None, "matmul_only_ms": None})
    params = jax.tree.map(lambda x: x[0], timed["state"].params)
    rest = jax.tree.map(lambda x: x[0], timed["state"].rest)
    return {"data_devices": devices, "compile_s": timed["compile_s"], "train_step_ms": 1e3 * step_s,
            "train_segments_per_s": rows * config.data.segments / step_s,
            "flops_per_step": flops,
            "achieved_flops_per_s": None if flops is None else flops / step_s,
            **matmuls,
            "graphdef": timed["graphdef"], "params": params, "rest": rest}


def bench_infer(graphdef, params, rest, config, steps: int) -> float:
    """Segments per second of test-mode scoring of B videos (normal + abnormal rows) of T segments,
    with the evaluator's scorer (full float32 precision)."""
    rows = config.data.batch.normal + config.data.batch.abnormal
    features = jax.random.uniform(jax.random.key(2), (rows, config.data.segments, config.model.feature_dim))
    score = make_scorer(graphdef, config.train.eval_precision)
    stacked = lambda tree: jax.tree.map(lambda x: x[None], tree)
    times = time_calls(score, lambda: (stacked(params), stacked(rest), features, None), steps, "inference")
    return rows * config.data.segments / statistics.median(times)


def bench_sweep(config, max_members: int, steps: int) -> list[dict]:
    """Member-steps per second of the vmapped step for 1, 2, 4, ..., max_members members."""
    counts, m = [], 1
    while m < max_members:
        counts.append(m)
        m *= 2
    counts.append(max_members)
    k = int(config.train.steps_per_dispatch)
    results = []
    for members in counts:
        mesh = distributed.make_mesh(distributed.largest_divisor(members, jax.device_count()), 1)
        timed = timed_step(config, members, mesh, steps, f"sweep x{members}")
        results.append({"members": members, "devices": mesh.size, "compile_s": timed["compile_s"],
                        "dispatch_ms": 1e3 * timed["dispatch_s"],
                        "member_steps_per_s": members * k / timed["dispatch_s"]})
    return results


def run_benchmark(model: str, batch_size: int, segments: int, feature_dim: int, steps: int, *, members: int = 0,
                  hidden: int = 512, slots: int = 60, steps_per_dispatch: int = 1) -> dict:
    """Every figure of the benchmark as a JSON-able dict."""
    config = bench_config(model, batch_size, segments, feature_dim, hidden=hidden, slots=slots,
                          steps_per_dispatch=steps_per_dispatch)
    device = jax.devices()[0]
    result = {"model": model, "batch_size": batch_size, "rows": sum(config.data.batch.values()),
              "segments": segments, "feature_dim": feature_dim, "hidden": hidden, "slots": slots,
              "steps": steps, "steps_per_dispatch": steps_per_dispatch, "platform": device.platform,
              "device_kind": device.device_kind, "device_count": jax.device_count(), "jax": jax.__version__}
    train_result = bench_train(config, steps)
    graphdef, params, rest = (train_result.pop(k) for k in ("graphdef", "params", "rest"))
    result |= train_result
    result["infer_segments_per_s"] = bench_infer(graphdef, params, rest, config, steps)
    peak = matmul_peak()
    result["matmul_n"], result["matmul_peak_flops_per_s"] = peak["n"], peak["flops_per_s"]
    achieved = result["achieved_flops_per_s"]
    result["fraction_of_peak"] = None if achieved is None else achieved / peak["flops_per_s"]
    matmul_flops = result["matmul_flops_per_step"]
    result["matmul_only_fraction_of_peak"] = (
        None if not matmul_flops else matmul_flops / (result["matmul_only_ms"] / 1e3) / peak["flops_per_s"])
    if members:
        result["sweep"] = bench_sweep(config, members, steps)
    return result


def format_report(result: dict) -> str:
    """The figures as aligned text lines."""
    def g(value, scale=1.0, fmt="{:.3g}"):
        return "n/a" if value is None else fmt.format(value / scale)

    lines = [
        f"{result['model']} on {result['platform']} ({result['device_kind']}): B={result['batch_size']} "
        f"({result['rows']} rows), T={result['segments']}, D={result['feature_dim']}, hidden={result['hidden']}, "
        f"{result['slots']} slots, {result['steps_per_dispatch']} step(s)/dispatch",
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
    for row in result.get("sweep", []):
        lines.append(f"  sweep {row['members']:>3d} members on {row['devices']} device(s): "
                     f"{row['member_steps_per_s']:.2f} member-steps/s ({row['dispatch_ms']:.1f} ms/dispatch, "
                     f"compile {row['compile_s']:.1f} s)")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="pavad-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("urdmu", "darm"), default="urdmu",
                        help="urdmu: UR-DMU's loss; darm: PA-VAD's (UR-DMU + L_DA + L_upd, B/2 pseudo-normal rows more)")
    parser.add_argument("--batch-size", type=int, default=8, help="B: B/2 normal + B/2 abnormal videos (default 8)")
    parser.add_argument("--segments", type=int, default=200, help="T, segments per video (default 200)")
    parser.add_argument("--feature-dim", type=int, default=1024, help="D, feature size (default 1024, I3D)")
    parser.add_argument("--hidden", type=int, default=512, help="UR-DMU's hidden size (default 512)")
    parser.add_argument("--slots", type=int, default=60, help="memory slots per bank (default 60)")
    parser.add_argument("--steps", type=int, default=20, help="timed calls of each program (median reported)")
    parser.add_argument("--steps-per-dispatch", type=int, default=1,
                        help="optimiser updates per jitted call (lax.scan), as train.steps_per_dispatch")
    parser.add_argument("--members", type=int, default=0,
                        help="also time the vmapped sweep step for 1, 2, 4, ..., M members")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    for name in ("segments", "feature_dim", "hidden", "slots", "steps", "steps_per_dispatch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        bench_config(args.model, args.batch_size, args.segments, args.feature_dim)
    except ValueError as e:
        parser.error(str(e))
    result = run_benchmark(args.model, args.batch_size, args.segments, args.feature_dim, args.steps,
                           members=args.members, hidden=args.hidden, slots=args.slots,
                           steps_per_dispatch=args.steps_per_dispatch)
    print(format_report(result))
    if args.json:
        atomic.write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
