"""pavad-eval: the UR-DMU evaluation protocol, batched and jitted.

  pavad-eval --workdir runs/synthetic                       # best checkpoint, the run's test set
  pavad-eval --workdir runs/synthetic --checkpoint last --data /data/ucf --videos 4

Test videos are scored at full length in length buckets (one compiled program per bucket),
crop scores averaged, each segment score repeated for its 16 frames, and all videos
concatenated in test-set order against the concatenated frame ground truth. Writes
metrics.json, roc.png and score-trace PNGs (ground-truth intervals shaded) under
WORKDIR/eval/<checkpoint>/, with every video's segment scores in scores.npz.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import resource
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from pavad_jax import atomic, metrics, plots
from pavad_jax.data import pipeline
from pavad_jax.data.pipeline import GIB
from pavad_jax.distributed import DATA_AXIS


@dataclasses.dataclass
class EvalData:
    """This host's packed test batches (read from the shards as they are scored), the whole test
    set's metadata, and the memory budget per device of one scoring call."""

    batches: pipeline.EvalBatches
    evalset: pipeline.EvalSet
    mesh: jax.sharding.Mesh
    memory_budget: int

    @classmethod
    def load(cls, data_config, mesh, split: str | None = None) -> "EvalData":
        batches, evalset = pipeline.make_eval_batches(
            data_config, split=split, process_index=jax.process_index(), process_count=jax.process_count(),
            batch_multiple=mesh.size)
        return cls(batches=batches, evalset=evalset, mesh=mesh, memory_budget=pipeline.eval_memory_budget(data_config))


# Queries per attention step of the evaluation forward (the step also spans a few rows; see
# urdmu.global_attention): past ~512 larger steps gain nothing and hold more logits.
EVAL_QUERY_BLOCK = 512


class Scorer:
    """Test-mode scores of packed batches, in as few crops at a time as the memory budget needs.

    scorer(params, features, segment_ids, memory_budget=None) -> (B, T) scores. For each batch
    shape the largest crop chunk (a divisor of the crop count) whose compiled program XLA
    estimates within the budget (arguments + temporaries + output, per device) is compiled
    once and reused; with no chunk fitting, one crop at a time (and a warning).
    """

    def __init__(self, graphdef, rest):
        def score(params, features, segment_ids, crop_chunk):
            detector = nnx.merge(graphdef, params, rest)
            return detector.urdmu.scores(features, segment_ids=segment_ids, crop_chunk=crop_chunk,
                                         query_block=EVAL_QUERY_BLOCK)

        self._jit = jax.jit(score, static_argnames="crop_chunk")
        self._programs: dict = {}
        self.chunks: dict = {}  # (features shape, budget) -> crop chunk chosen: what `video_scores` reports

    def _program(self, params, features, segment_ids, budget: int | None):
        key = (features.shape, features.dtype, segment_ids.shape, budget)
        if key not in self._programs:
            crops = features.shape[1] if features.ndim == 4 else 1
            for chunk in sorted((c for c in range(1, crops + 1) if crops % c == 0), reverse=True):
                compiled = self._jit.lower(params, features, segment_ids, chunk).compile()
                need = program_bytes(compiled)
                if budget is None or need is None or need <= budget or chunk == 1:
                    break
            if budget is not None and need is not None and need > budget:
                logging.warning("scoring a batch of shape %s needs ~%.2f GiB even one crop at a time, over the "
                                "budget of %.2f GiB (data.eval_memory_gb)", features.shape, need / GIB, budget / GIB)
            self._programs[key], self.chunks[key] = compiled, chunk
        return self._programs[key]

    def __call__(self, params, features, segment_ids, memory_budget: int | None = None):
        return self._program(params, features, segment_ids, memory_budget)(params, features, segment_ids)


def make_scorer(graphdef, rest) -> Scorer:
    """The evaluation scorer of a model (see `Scorer`); compiles once per batch shape."""
    return Scorer(graphdef, rest)


def program_bytes(compiled) -> int | None:
    """XLA's estimate of a compiled program's memory per device: arguments + temporaries + outputs
    - aliased (donated) buffers (None where the backend gives no memory analysis)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes)


def _gather(x: jax.Array | np.ndarray) -> np.ndarray:
    """The global value of a batch-sharded array (rows of every host, in process order)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


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


def video_scores(scorer, params, data: EvalData, *, progress: bool = True) -> tuple[list[np.ndarray], dict]:
    """Per-video segment scores (T,) in test-set order, and the scoring's figures.

    Batch rows are sharded over the mesh. The figures: eval_seconds (wall time of the scoring,
    compilation included), segments_per_s, peak_rss_gb (this process so far) and device_peak_gb
    (where JAX reports it), crop_chunks (batch row length -> crops scored at a time).
    """
    sharding = NamedSharding(data.mesh, P(DATA_AXIS))
    params = jax.device_put(params, NamedSharding(data.mesh, P()))  # a no-op when already replicated
    lengths = data.evalset.lengths
    scores: list[np.ndarray | None] = [None] * len(data.evalset)
    per_device_budget = data.memory_budget
    start_time = time.perf_counter()
    with tqdm(total=data.batches.segments, desc="scoring test videos", unit="segment", unit_scale=True,
              disable=not progress or jax.process_index() != 0) as bar:
        for batch in data.batches:
            features, segment_ids = (jax.make_array_from_process_local_data(sharding, batch[k])
                                     for k in ("features", "segment_ids"))
            out = _gather(scorer(params, features, segment_ids, per_device_budget))
            bar.update(place_scores(out, _gather(batch["video"]), _gather(batch["start"]), lengths, scores))
    seconds = time.perf_counter() - start_time
    missing = [data.evalset.ids[i] for i, s in enumerate(scores) if s is None]
    if missing:
        raise RuntimeError(f"evaluation batches skipped {len(missing)} videos, e.g. {missing[:3]}")
    chunks = {str(shape[2]): chunk for (shape, *_), chunk in getattr(scorer, "chunks", {}).items()}
    stats = {"eval_seconds": seconds, "segments_per_s": data.batches.segments / seconds, **peak_memory(),
             "crop_chunks": chunks}
    return scores, stats


def evaluate(scorer, params, data: EvalData, *, return_scores: bool = False, progress: bool = True):
    """Frame-level AUC, both APs and per-class AUC over the whole test set, with the scoring's
    wall time, segments/s and peak memory (see `video_scores`)."""
    scores, stats = video_scores(scorer, params, data, progress=progress)
    result = metrics.video_metrics(scores, data.evalset.frame_labels, data.evalset.anomaly_classes) | stats
    return (result, scores) if return_scores else result


def load_run(workdir: pathlib.Path, which: str = "best"):
    """(detector, full training config) of a pavad-train run: its best or last export, or a step.

    A step number restores the parameters from WORKDIR/checkpoints/STEP (the Orbax training
    checkpoint); best and last are the model exports pavad-train writes beside it.
    """
    import ml_collections

    from pavad_jax import checkpoint

    config_path = workdir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{workdir} is not a pavad-train run: {config_path.name} is missing")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    if which in ("best", "last"):
        if not (workdir / which).is_dir():
            raise FileNotFoundError(f"{workdir / which} does not exist (no evaluation has run yet?)")
        detector, _ = checkpoint.load_model(workdir / which)
        return detector, config
    if not which.isdigit():
        raise ValueError(f"--checkpoint must be best, last or a step number, got {which!r}")
    import orbax.checkpoint as ocp

    from pavad_jax.models.detector import build_detector
    from pavad_jax.train import split_model

    detector = build_detector(config.model, config.loss, seed=0)
    graphdef, params, rest = split_model(detector)
    with ocp.CheckpointManager((workdir / "checkpoints").absolute()) as manager:
        if int(which) not in manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {which} in {workdir / 'checkpoints'}; "
                                    f"saved steps: {sorted(manager.all_steps())}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, params)
        restored = manager.restore(int(which), args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item={"params": abstract}, partial_restore=True)))
    return nnx.merge(graphdef, restored["state"]["params"], rest), config


# ---------------------------------------------------------------------------------------------
# Plots.

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

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="pavad-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a pavad-train run folder")
    parser.add_argument("--checkpoint", default="best",
                        help="best (default), last, or a step number saved in WORKDIR/checkpoints")
    parser.add_argument("--data", default=None, help="dataset folder to evaluate on (default: the run's)")
    parser.add_argument("--split", default=None, help="split folder inside the dataset (default: config.data.test_split)")
    parser.add_argument("--videos", type=int, default=4, help="how many score-trace PNGs to draw")
    parser.add_argument("--video-ids", nargs="*", default=None, help="draw traces for these test video ids instead")
    args = parser.parse_args(argv)

    from pavad_jax import distributed
    from pavad_jax.train import split_model

    workdir = pathlib.Path(args.workdir)
    try:
        detector, config = load_run(workdir, args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"pavad-eval: {e}") from None
    if args.data:
        config.data.dir = args.data
    data = EvalData.load(config.data, distributed.make_mesh(), split=args.split)
    evalset = data.evalset
    graphdef, params, rest = split_model(detector)
    result, scores = evaluate(make_scorer(graphdef, rest), params, data, return_scores=True)
    result |= {"checkpoint": args.checkpoint, "data_dir": str(config.data.dir), "videos": len(evalset)}
    if args.video_ids:
        unknown = sorted(set(args.video_ids) - set(evalset.ids))
        if unknown:
            raise SystemExit(f"pavad-eval: --video-ids not in the test set: {unknown}")
        videos = [evalset.ids.index(v) for v in args.video_ids]
    else:
        videos = choose_trace_videos(evalset, args.videos)
    out_dir = workdir / "eval" / str(args.checkpoint)
    write_report(out_dir, result, scores, evalset, videos)
    print(f"AUC {result['auc']:.4f}  AP(trapezoid) {result['ap_pr_trapezoid']:.4f}  "
          f"AP(average precision) {result['average_precision']:.4f}  over {len(evalset)} videos")
    for name, auc in sorted(result.get("per_class_auc", {}).items()):
        print(f"  {name:<20s} AUC {auc:.4f}")
    device_peak = f", device peak {result['device_peak_gb']:.2f} GiB" if "device_peak_gb" in result else ""
    print(f"scored {data.batches.segments} segments in {result['eval_seconds']:.1f} s "
          f"({result['segments_per_s']:.0f} segments/s), peak RSS {result['peak_rss_gb']:.2f} GiB{device_peak}")
    print(f"wrote {out_dir}/metrics.json, scores.npz, roc.png and {len(videos)} score traces")


if __name__ == "__main__":
    main()
