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
import pathlib

import jax
import numpy as np
from flax import nnx

from pavad_jax import atomic, distributed, metrics, plots
from pavad_jax.data import pipeline

PRECISIONS = {"highest": "highest", "default": None}


def make_scorer(graphdef, precision: str = "highest"):
    """jit(params, rest, features, mask) -> (M, B, T) test-mode scores of M stacked models.

    `precision` is a key of PRECISIONS: "highest" = full float32 matmuls on GPU/TPU too.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"config.train.eval_precision = {precision!r}: expected one of {sorted(PRECISIONS)}")

    def score(params, rest, features, mask):
        with jax.default_matmul_precision(PRECISIONS[precision]):
            return jax.vmap(lambda p, r: nnx.merge(graphdef, p, r).scores(features, mask))(params, rest)

    return jax.jit(score)


def stacked_model(detector) -> tuple:
    """(graphdef, params, rest) of one model with a leading member axis of 1."""
    graphdef, params, rest = nnx.split(detector, nnx.Param, ...)
    add_axis = lambda tree: jax.tree.map(lambda x: np.asarray(x)[None], tree)
    return graphdef, add_axis(params), add_axis(rest)


class Evaluator:
    """The test split's padded, bucketed batches (this host's rows) and a scorer over a mesh."""

    def __init__(self, data_config, mesh, graphdef, *, split: str | None = None, precision: str = "highest",
                 shards=None):
        self.mesh = mesh
        index, count = distributed.data_slice(mesh)
        self.batches, self.evalset = pipeline.make_eval_batches(
            data_config, split=split, process_index=index, process_count=count,
            batch_multiple=mesh.shape[distributed.DATA_AXIS], shards=shards)
        self.scorer = make_scorer(graphdef, precision)

    def scores(self, params, rest) -> list[list[np.ndarray]]:
        """Per member, per video (test-set order) segment scores (T,); params/rest stacked (M, ...)."""
        rows = distributed.batch_sharded(self.mesh)
        params, rest = (distributed.put_global(jax.device_get(t), distributed.member_sharded(self.mesh))
                        if not _on_mesh(t, self.mesh) else t for t in (params, rest))
        lengths = self.evalset.lengths
        scores: list[list[np.ndarray | None]] | None = None
        for batch in self.batches:
            features, mask, videos = (distributed.put_process_local(batch[k], rows) for k in ("features", "mask", "video"))
            out, videos = distributed.gather(self.scorer(params, rest, features, mask)), distributed.gather(videos)
            if scores is None:
                scores = [[None] * len(self.evalset) for _ in range(out.shape[0])]
            for row, video in enumerate(videos):
                if video >= 0:
                    for m in range(out.shape[0]):
                        scores[m][video] = out[m, row, : lengths[video]]
        missing = [self.evalset.ids[i] for i, s in enumerate(scores[0]) if s is None]
        if missing:
            raise RuntimeError(f"evaluation batches skipped {len(missing)} videos, e.g. {missing[:3]}")
        return scores

    def results(self, scores: list[list[np.ndarray]]) -> list[dict | None]:
        """The protocol's metrics of each member's scores; None where a score is not finite."""
        return [metrics.video_metrics(s, self.evalset.frame_labels, self.evalset.anomaly_classes)
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
        evaluator = Evaluator(data_config, distributed.make_mesh(), graphdef, split=args.split, precision=precision)
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
    print(f"wrote {out_dir}/metrics.json, scores.npz, roc.png and {len(videos)} score traces")


if __name__ == "__main__":
    main()
