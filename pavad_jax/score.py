"""pavad-score: per-segment anomaly scores of one video's features with a saved model."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from pavad_jax import atomic


def load_features(path: str, feature_dim: int) -> np.ndarray:
    """A (T, D) or (crops, T, D) float array from an .npy file, checked against the model's D."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot read features from {path}: {err}") from err
    if features.ndim not in (2, 3) or 0 in features.shape:
        raise SystemExit(f"error: {path}: features must be (T, D) or (crops, T, D), got shape {features.shape}")
    if features.shape[-1] != feature_dim:
        raise SystemExit(f"error: {path}: feature dimension D={features.shape[-1]} does not match the checkpoint's "
                         f"feature_dim={feature_dim} (last axis of shape {features.shape})")
    if not np.issubdtype(features.dtype, np.floating):
        raise SystemExit(f"error: {path}: features must be floating point, got {features.dtype}")
    return features.astype(np.float32)


def score_video(detector, features: np.ndarray, precision: str = "highest", extras: dict | None = None) -> np.ndarray:
    """(T, D) or (crops, T, D) -> (T,) scores, crops averaged: the evaluator's scorer on the video
    in a row of the length pavad-eval gives it (default data config). `extras`: the detector's
    per-segment fields, {name: (T, E)} (LAP's caption_embedding)."""
    from pavad_jax.config_base import default_data_config  # pylint: disable=import-outside-toplevel
    from pavad_jax.data.pipeline import bucket_length  # pylint: disable=import-outside-toplevel
    from pavad_jax.evaluate import Scorer, stacked_model  # pylint: disable=import-outside-toplevel

    crops = features if features.ndim == 3 else features[None]
    length = crops.shape[1]
    data = default_data_config()
    row = bucket_length(length, data.eval_buckets, data.eval_max_padding)
    batch = np.zeros((1, crops.shape[0], row, crops.shape[2]), np.float32)
    batch[0, :, :length] = crops
    segment_ids = np.zeros((1, row), np.int32)
    segment_ids[0, :length] = 1
    padded = {}
    for name, value in (extras or {}).items():
        padded[name] = np.zeros((1, row, value.shape[-1]), np.float32)
        padded[name][0, :length] = value
    graphdef, params, rest = stacked_model(detector)
    return np.asarray(Scorer(graphdef, precision)(params, rest, batch, segment_ids, extras=padded))[0, 0, :length]


def save_atomic(path: str, array: np.ndarray) -> None:
    """np.save to a temporary file beside `path`, then rename it into place."""
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def summary(scores: np.ndarray, top: int = 5) -> str:
    """T, min/mean/max and the highest-scoring segments, as printed lines."""
    order = np.argsort(-scores, kind="stable")[:top]
    best = ", ".join(f"{i} ({scores[i]:.4f})" for i in order)
    return (f"T={scores.shape[0]} segments  min={scores.min():.4f}  mean={scores.mean():.4f}  max={scores.max():.4f}\n"
            f"top segments (index, score): {best}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pavad-score",
        description="Score one video: reads its segment features (T, D) or (crops, T, D) from an .npy file, "
        "writes one anomaly score in [0, 1] per segment (crops averaged; a segment is 16 frames for "
        "I3D features) and prints a short summary.")
    parser.add_argument("--checkpoint", required=True,
                        help="a model export (a run's best/ or last/, a sweep member's, pavad-import-urdmu output) "
                        "or a pavad-train run folder (its best/)")
    parser.add_argument("--features", required=True, help=".npy file with (T, D) or (crops, T, D) features")
    parser.add_argument("--captions", help=".npy file with the (T, E) per-segment caption embeddings (LAP, TEVAD)")
    parser.add_argument("--output", help="where to write the (T,) float32 scores as .npy (default: not written)")
    parser.add_argument("--top", type=int, default=5, help="how many top segments to print (default 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pavad_jax.checkpoint import resolve_model  # pylint: disable=import-outside-toplevel

    try:
        detector, config, run_config, _ = resolve_model(args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    features = load_features(args.features, int(config.model.feature_dim))
    extras = {}
    for name in getattr(detector, "extra_fields", ()):
        if not args.captions:
            raise SystemExit(f"error: {args.checkpoint}: model {config.model.name!r} reads per-segment {name!r}: "
                             "pass --captions FILE.npy of shape (T, model.text_dim)")
        extras[name] = np.load(args.captions).astype(np.float32)
        if extras[name].shape != (features.shape[-2], int(config.model.text_dim)):
            raise SystemExit(f"error: {args.captions}: shape {extras[name].shape}, expected (T, model.text_dim) = "
                             f"{(features.shape[-2], int(config.model.text_dim))}")
    precision = run_config.train.get("eval_precision", "highest") if run_config is not None else "highest"
    scores = score_video(detector, features, precision, extras)
    if args.output:
        save_atomic(args.output, scores.astype(np.float32))
    print(summary(scores, args.top))
    if args.output:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
