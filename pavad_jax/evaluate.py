"""pavad-eval and the one evaluator: the UR-DMU protocol, batched and jitted.

  pavad-eval --workdir runs/synthetic                        # a run's best export, the run's test set
  pavad-eval --workdir runs/synthetic --checkpoint last --data /data/ucf --videos 4
  pavad-eval --checkpoint /models/urdmu_ucf --data /data/ucf  # any export or imported checkpoint

Test videos are scored at full length in length buckets (one compiled program per bucket),
crop scores averaged, each segment score repeated for its 16 frames, and all videos
concatenated in test-set order against the concatenated frame ground truth. Writes
metrics.json, roc.png and score-trace PNGs (ground-truth intervals shaded) with every video's
segment scores in scores.npz.

`Evaluator` is what pavad-train, pavad-sweep, pavad-eval, pavad-score and pavad-bench score
with: every member of a (members, data) mesh at once, in full float32 matmul precision by
default (train.eval_precision), so scores equal the reference's on every backend.
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
import resource
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from pavad_jax import atomic, distributed, metrics, plots
from pavad_jax.data import pipeline
from pavad_jax.data.pipeline import GIB

PRECISIONS = {"highest": "highest", "default": None}


def eval_attention_block(length: int) -> int | None:
    """Queries and keys per attention tile of the evaluation forward (urdmu.global_attention) on
    rows of `length` segments; None: one batched product over rows and heads. Measured on 2-core
    CPUs, whole UR-DMU scoring of 10 crops: rows of up to 512 segments scored 9-10 % faster as one
    batched product than as 512-tiles (Xeon, AVX-512); 1,024 rows as four 512-tiles (one 1,024 x
    1,024 tile of logits, 4 MiB, scored 30 % slower, EPYC AVX2); beyond, tiles of up to 1,024 (a
    6,784 row as 7 x 7 tiles of 976 scored 13 % faster than as 14 x 14 of 488, EPYC)."""
    if length <= 512:
        return None
    return 512 if length <= 1024 else 1024


def program_bytes(compiled) -> int | None:
    """XLA's estimate of a compiled program's memory per device: arguments + temporaries + outputs
    - aliased (donated) buffers (None where the backend gives no memory analysis)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes)


def default_crop_chunk() -> int | None:
    """Crops per pass of the scoring program when data.eval_crop_chunk is 0: one on CPU, all
    (None) on accelerators. On XLA:CPU one crop's activations (2,048 x 2,048 floats in a
    16 x 128 batch) stay in cache between ops and each pass maps ~10x fewer fresh pages; whole
    UR-DMU scoring of 10 crops, 2-core EPYC (AVX-512): 16 x 128 rows 20 % faster per batch,
    4 x 512 and 2 x 1,024 11 %, 2,304 7.5 %, 6,784 even. Accelerators want the larger products."""
    return 1 if jax.local_devices()[0].platform == "cpu" else None


class Scorer:
    """Test-mode scores of M stacked models, a few crops per pass as speed and the memory budget ask.

    scorer(params, rest, features, segment_ids, memory_budget=None) -> (M, B, T) scores; params and
    rest carry a leading member axis. For each batch shape the largest crop chunk (a divisor of
    the crop count) of at most `crop_chunk` crops (0: `default_crop_chunk()`) whose compiled
    program XLA estimates within the budget (arguments + temporaries + output, per device) is
    compiled once and reused; with no chunk fitting, one crop at a time (and a warning).
    `precision` is a key of PRECISIONS: "highest" = full float32 matmuls on GPU/TPU too, so
    scores equal the reference's on every backend. Safe to call from several threads: each
    program is compiled once, by the first thread that needs it.
    """

    def __init__(self, graphdef, precision: str = "highest", crop_chunk: int = 0):
        if precision not in PRECISIONS:
            raise ValueError(f"config.train.eval_precision = {precision!r}: expected one of {sorted(PRECISIONS)}")
        if crop_chunk < 0:
            raise ValueError(f"config.data.eval_crop_chunk must be >= 0 (0 = automatic), got {crop_chunk}")
        self.max_chunk = crop_chunk or default_crop_chunk()  # None: all crops

        def score(params, rest, features, segment_ids, extras, crop_chunk):
            with jax.default_matmul_precision(PRECISIONS[precision]):
                return jax.vmap(lambda p, r: nnx.merge(graphdef, p, r).scores(
                    features, segment_ids=segment_ids, crop_chunk=crop_chunk,
                    attention_block=eval_attention_block(features.shape[-2]),
                    **extras))(params, rest)

        self._jit = jax.jit(score, static_argnames="crop_chunk")
        self._lock = threading.Lock()
        self._programs: dict = {}  # key -> Future of the compiled program
        self.chunks: dict = {}  # (features shape, budget) -> crop chunk chosen: what the figures report

    def _program(self, params, rest, features, segment_ids, extras, budget: int | None):
        key = (features.shape, features.dtype, segment_ids.shape, budget,
               tuple((k, v.shape, v.dtype) for k, v in sorted(extras.items())))
        with self._lock:
            future, owner = self._programs.get(key), False
            if future is None:
                future, owner = self._programs.setdefault(key, Future()), True
        if owner:
            try:
                future.set_result(self._compile(key, params, rest, features, segment_ids, extras, budget))
            except BaseException as e:
                future.set_exception(e)
        return future.result()

    def _compile(self, key, params, rest, features, segment_ids, extras, budget: int | None):
        crops = features.shape[1] if features.ndim == 4 else 1
        largest = crops if self.max_chunk is None else min(crops, self.max_chunk)
        for chunk in sorted((c for c in range(1, largest + 1) if crops % c == 0), reverse=True):
            compiled = self._jit.lower(params, rest, features, segment_ids, extras, chunk).compile()
            need = program_bytes(compiled)
            if budget is None or need is None or need <= budget or chunk == 1:
                break
        if budget is not None and need is not None and need > budget:
            logging.warning("scoring a batch of shape %s needs ~%.2f GiB even one crop at a time, over the "
                            "budget of %.2f GiB (data.eval_memory_gb)", features.shape, need / GIB, budget / GIB)
        self.chunks[key] = chunk
        return compiled

    def compile_ahead(self, params, rest, batches: list[tuple], memory_budget: int | None = None,
                      threads: int = 1) -> ThreadPoolExecutor:
        """Start compiling the programs of every (features, segment_ids, extras) batch spec
        (jax.ShapeDtypeStruct leaves), in the order given, on `threads` background threads, and
        return at once: scoring starts as soon as its batch's program is ready while the later
        ones compile (XLA compiles a program mostly on one core). Shut the returned pool down
        (or use it as a context manager) when done."""
        pool = ThreadPoolExecutor(max(1, min(len(batches), threads)), thread_name_prefix="compile")
        for spec in batches:
            pool.submit(self._program, params, rest, *spec, memory_budget)
        return pool

    def __call__(self, params, rest, features, segment_ids, memory_budget: int | None = None, extras=None):
        """`extras`: the detector's per-segment fields beyond features, {name: (B, L, E)} packed alike."""
        extras = dict(extras or {})
        return self._program(params, rest, features, segment_ids, extras, memory_budget)(
            params, rest, features, segment_ids, extras)


def stacked_model(detector) -> tuple:
    """(graphdef, params, rest) of one model with a leading member axis of 1."""
    graphdef, params, rest = nnx.split(detector, nnx.Param, ...)
    add_axis = lambda tree: jax.tree.map(lambda x: np.asarray(x)[None], tree)
    return graphdef, add_axis(params), add_axis(rest)


def peak_memory() -> dict[str, float]:
    """Peak memory so far, GiB: this process's resident set (VmHWM) and, where JAX reports it, the
    first local device's peak allocation."""
    peaks = {}
    try:
        status = pathlib.Path("/proc/self/status").read_text()
        peaks["peak_rss_gb"] = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM"))) / 2**20
    except (OSError, StopIteration):
        peaks["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        peaks["device_peak_gb"] = stats["peak_bytes_in_use"] / GIB
    return peaks


def place_scores(out: np.ndarray, video: np.ndarray, start: np.ndarray, lengths: np.ndarray,
                 scores: list) -> int:
    """Copy each packed video's segment scores out of the (B, L) batch scores; returns the segments placed."""
    placed = 0
    for row in range(out.shape[0]):
        for v, first in zip(video[row], start[row]):
            if v >= 0:
                scores[v] = out[row, first:first + lengths[v]].copy()
                placed += int(lengths[v])
    return placed


class Evaluator:
    """The test split of a dataset (metadata here, features read batch by batch as they are scored)
    and a scorer of every member of a (members, data) mesh: rows over "data", members over
    "members"; the memory budget (data.eval_memory_gb) is per device."""

    def __init__(self, data_config, mesh, graphdef, *, split: str | None = None, precision: str = "highest",
                 shards=None, progress: bool = True, extra_fields: tuple[str, ...] = ()):
        self.mesh = mesh
        self.extra_fields = tuple(extra_fields)  # per-segment fields the detector reads (LAP's captions)
        index, count = distributed.data_slice(mesh)
        self.batches, self.evalset = pipeline.make_eval_batches(
            data_config, split=split, process_index=index, process_count=count,
            batch_multiple=mesh.shape[distributed.DATA_AXIS], shards=shards, fields=self.extra_fields)
        self.concurrency = pipeline.eval_concurrency(data_config, mesh)
        # The budget is per program; `concurrency` programs run at once.
        self.memory_budget = pipeline.eval_memory_budget(data_config) // self.concurrency
        self.scorer = Scorer(graphdef, precision, int(data_config.get("eval_crop_chunk", 0)))
        self.progress = progress
        self.figures: dict = {}  # of the last scoring: eval_seconds, segments_per_s, peak memory, crop chunks

    def scores(self, params, rest) -> list[list[np.ndarray]]:
        """Per member, per video (test-set order) segment scores (T,); params/rest stacked (M, ...).

        Batches are scored `concurrency` at a time (data.eval_concurrency), each on its own
        thread; programs compile on background threads while the first batches are scored."""
        rows = distributed.batch_sharded(self.mesh)
        params, rest = (t if _on_mesh(t, self.mesh) else
                        distributed.put_global(jax.device_get(t), distributed.member_sharded(self.mesh))
                        for t in (params, rest))
        members = jax.tree.leaves(params)[0].shape[0]
        scores = [[None] * len(self.evalset) for _ in range(members)]

        def score_batch(batch):
            features, segment_ids = (distributed.put_process_local(batch[k], rows) for k in ("features", "segment_ids"))
            extras = {k: distributed.put_process_local(batch[k], rows) for k in self.extra_fields}
            out = distributed.gather(self.scorer(params, rest, features, segment_ids, self.memory_budget, extras))
            return out, *(distributed.gather(distributed.put_process_local(batch[k], rows)) for k in ("video", "start"))

        def place(done):
            out, video, start = done.result()
            for m in range(members):
                placed = place_scores(out[m], video, start, self.evalset.lengths, scores[m])
            bar.update(placed)

        start_time = time.perf_counter()
        compiling = self.scorer.compile_ahead(params, rest, self._batch_specs(rows), self.memory_budget,
                                              threads=(os.cpu_count() or 1) - self.concurrency)
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="score") as pool, tqdm(
                    total=self.batches.segments, desc="scoring test videos", unit="segment", unit_scale=True,
                    leave=False, disable=not self.progress or jax.process_index() != 0) as bar:
                in_flight = deque()
                for batch in self.batches:
                    if len(in_flight) == self.concurrency:
                        place(in_flight.popleft())
                    in_flight.append(pool.submit(score_batch, batch))
                while in_flight:
                    place(in_flight.popleft())
        finally:
            compiling.shutdown(cancel_futures=True)
        seconds = time.perf_counter() - start_time
        missing = [self.evalset.ids[i] for i, s in enumerate(scores[0]) if s is None]
        if missing:
            raise RuntimeError(f"evaluation batches skipped {len(missing)} videos, e.g. {missing[:3]}")
        self.figures = {"eval_seconds": seconds, "segments_per_s": self.batches.segments / seconds, **peak_memory(),
                        "crop_chunks": {str(shape[2]): chunk for (shape, *_), chunk in self.scorer.chunks.items()}}
        return scores

    def _batch_specs(self, rows) -> list[tuple]:
        """(features, segment_ids, extras) shapes of the distinct batch shapes, as global arrays."""
        b = self.batches
        spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
        return [(spec((n, b.crops, length, b.shards.feature_dim), b.shards.dtype), spec((n, length), np.int32),
                 {k: spec((n, length, b.shards.segment_fields[k]), b.shards.dtype) for k in self.extra_fields})
                for n, length in dict.fromkeys(b.shapes())]

    def results(self, scores: list[list[np.ndarray]]) -> list[dict | None]:
        """The protocol's metrics of each member's scores, with the scoring's figures; None where a
        score is not finite (no metric is computed on non-finite values)."""
        return [metrics.video_metrics(s, self.evalset.frame_labels, self.evalset.anomaly_classes) | self.figures
                if all(np.isfinite(v).all() for v in s) else None for s in scores]

    def __call__(self, params, rest) -> list[dict | None]:
        return self.results(self.scores(params, rest))


def _on_mesh(tree, mesh) -> bool:
    """Whether every leaf is already a global array on `mesh`."""
    leaves = jax.tree.leaves(tree)
    return all(isinstance(x, jax.Array) and getattr(x.sharding, "mesh", None) == mesh for x in leaves)


# ---------------------------------------------------------------------------------------------
# Plots and report.

def _intervals(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) frame intervals where labels are 1."""
    edges = np.diff(np.r_[0, (np.asarray(labels) > 0).astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def plot_roc(path: pathlib.Path, frame_labels, frame_scores, auc: float) -> None:
    plt = plots.pyplot()
    fpr, tpr = metrics.roc_curve(frame_labels, frame_scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Frame-level ROC",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=120)


def plot_score_trace(path: pathlib.Path, video_id: str, segment_scores, frame_labels) -> None:
    """Frame scores over time, ground-truth anomalies shaded (PA-VAD Fig. 8 style)."""
    plt = plots.pyplot()
    frames = metrics.frame_scores(segment_scores)
    fig, ax = plt.subplots(figsize=(8, 2.6))
    for start, end in _intervals(frame_labels):
        ax.axvspan(start, end, color="tab:red", alpha=0.2, lw=0)
    ax.plot(np.arange(frames.size), frames, c="tab:blue", lw=1.5)
    ax.set(xlim=(0, frames.size), ylim=(0, 1.02), xlabel="frame", ylabel="anomaly score", title=video_id)
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=110)


def choose_trace_videos(evalset: pipeline.EvalSet, count: int) -> list[int]:
    """Abnormal videos first (where the shading says something), then normal ones."""
    abnormal = [i for i, y in enumerate(evalset.frame_labels) if np.any(y)]
    normal = [i for i, y in enumerate(evalset.frame_labels) if not np.any(y)]
    return (abnormal[: max(1, count - count // 4)] + normal)[:count]


def write_report(out_dir: pathlib.Path, result: dict, scores, evalset: pipeline.EvalSet, videos: list[int]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out_dir / "metrics.json", result, indent=2)
    with atomic.atomic_path(out_dir / "scores.npz") as tmp:
        np.savez(tmp, **{video_id: s for video_id, s in zip(evalset.ids, scores)})  # segment scores per video
    all_scores = np.concatenate([metrics.frame_scores(s) for s in scores])
    plot_roc(out_dir / "roc.png", evalset.frame_ground_truth(), all_scores, result["auc"])
    for i in videos:
        plot_score_trace(out_dir / f"trace_{evalset.ids[i].replace('/', '_')}.png", evalset.ids[i], scores[i],
                         evalset.frame_labels[i])


# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pavad-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None,
                        help="a pavad-train run folder (its config gives the dataset; output under WORKDIR/eval/)")
    parser.add_argument("--checkpoint", default="best",
                        help="best (default), last or a step number of --workdir; or any checkpoint folder: a model "
                             "export (a run's best/ or last/, a sweep member's, pavad-import-urdmu output) or a run")
    parser.add_argument("--data", default=None, help="dataset folder to evaluate on (default: the run's)")
    parser.add_argument("--split", default=None, help="split folder inside the dataset (default: the config's, test)")
    parser.add_argument("--output", default=None, help="where to write the report (default: WORKDIR/eval/CHECKPOINT, "
                                                       "or CHECKPOINT/eval for a checkpoint folder)")
    parser.add_argument("--videos", type=int, default=4, help="how many score-trace PNGs to draw")
    parser.add_argument("--video-ids", nargs="*", default=None, help="draw traces for these test video ids instead")
    return parser


def _resolve(args) -> tuple:
    """(detector, data config, output folder, name of the checkpoint) from the command line."""
    from pavad_jax import checkpoint
    from pavad_jax.config_base import default_data_config, default_train_config

    if args.workdir and not pathlib.Path(args.checkpoint).is_dir():
        path, which = pathlib.Path(args.workdir), args.checkpoint
    elif pathlib.Path(args.checkpoint).is_dir():
        path, which = pathlib.Path(args.checkpoint), "best"
    else:
        raise ValueError(f"--checkpoint {args.checkpoint!r}: no such folder (give --workdir for best, last or a step)")
    detector, _, run_config, name = checkpoint.resolve_model(path, which)
    data_config = run_config.data if run_config is not None else default_data_config()
    train_config = run_config.train if run_config is not None else default_train_config()
    if args.data:
        data_config.dir = args.data
    if not data_config.dir:
        raise ValueError(f"{path} records no dataset: pass --data DATASET")
    if args.output:
        out_dir = pathlib.Path(args.output)
    elif args.workdir and path == pathlib.Path(args.workdir):
        out_dir = path / "eval" / str(which)
    elif checkpoint.read_run_config(path.parent) is not None and path.name in ("best", "last"):
        out_dir = path.parent / "eval" / path.name
    else:
        out_dir = path / "eval"
    return detector, data_config, train_config.get("eval_precision", "highest"), out_dir, name


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        detector, data_config, precision, out_dir, name = _resolve(args)
        graphdef, params, rest = stacked_model(detector)
        evaluator = Evaluator(data_config, distributed.make_mesh(), graphdef, split=args.split, precision=precision,
                              extra_fields=getattr(detector, "extra_fields", ()))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"pavad-eval: {e}") from None
    evalset = evaluator.evalset
    scores = evaluator.scores(params, rest)[0]
    result = evaluator.results([scores])[0]
    if result is None:
        raise SystemExit(f"pavad-eval: {name} gives non-finite scores on {data_config.dir}: no metric reported")
    result |= {"checkpoint": name, "data_dir": str(data_config.dir), "videos": len(evalset)}
    if args.video_ids:
        unknown = sorted(set(args.video_ids) - set(evalset.ids))
        if unknown:
            raise SystemExit(f"pavad-eval: --video-ids not in the test set: {unknown}")
        videos = [evalset.ids.index(v) for v in args.video_ids]
    else:
        videos = choose_trace_videos(evalset, args.videos)
    write_report(out_dir, result, scores, evalset, videos)
    print(f"AUC {result['auc']:.4f}  AP(trapezoid) {result['ap_pr_trapezoid']:.4f}  "
          f"AP(average precision) {result['average_precision']:.4f}  over {len(evalset)} videos")
    for class_name, auc in sorted(result.get("per_class_auc", {}).items()):
        print(f"  {class_name:<20s} AUC {auc:.4f}")
    device_peak = f", device peak {result['device_peak_gb']:.2f} GiB" if "device_peak_gb" in result else ""
    print(f"scored {evaluator.batches.segments} segments in {result['eval_seconds']:.1f} s "
          f"({result['segments_per_s']:.0f} segments/s), peak RSS {result['peak_rss_gb']:.2f} GiB{device_peak}")
    print(f"wrote {out_dir}/metrics.json, scores.npz, roc.png and {len(videos)} score traces")


if __name__ == "__main__":
    main()
