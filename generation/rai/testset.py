"""Evaluation videos with known anomalous frames, for runs without a labelled benchmark.

A *pasted* anomaly is a square crop of another real video that slides across the frame during
the frame interval [start, stop): an object that does not belong to the scene, moving fast.
The frames of that interval are labelled 1, all others 0. This is a synthetic stand-in for
real ground truth (documented as such in docs/occ.md); benchmark configs give real labels.
"""
from __future__ import annotations

import pathlib

import numpy as np

from generation import media


def paste_moving_patch(frames: np.ndarray, patch: np.ndarray, start: int, stop: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Copy of frames (N, H, W, C) with patch (P, P, C) sliding in a straight line over [start, stop)."""
    n, height, width, _ = frames.shape
    if not 0 <= start < stop <= n:
        raise ValueError(f"anomaly interval [{start}, {stop}) does not fit a {n}-frame video")
    side = patch.shape[0]
    y0, y1 = rng.integers(0, height - side + 1, size=2)
    x0, x1 = 0, width - side  # left to right, so the motion is large and unmistakable
    if rng.random() < 0.5:
        x0, x1 = x1, x0
    out = frames.copy()
    for k, t in enumerate(range(start, stop)):
        a = k / max(1, stop - start - 1)
        y, x = int(round(y0 + a * (y1 - y0))), int(round(x0 + a * (x1 - x0)))
        out[t, y:y + side, x:x + side] = patch
    return out


def load_labels(path: str | pathlib.Path, num_frames: int) -> np.ndarray:
    """Real per-frame labels: .npy or text of 0/1 values, or a folder of per-frame ground-truth masks
    (as UCSD Ped2's TestNNN_gt: a frame is anomalous when its mask has any non-zero pixel)."""
    path = pathlib.Path(path)
    if path.is_dir():
        labels = np.array([mask.any() for mask in media.iter_frames(path)], np.uint8)
    elif path.suffix == ".npy":
        labels = np.load(path)
    else:
        labels = np.loadtxt(path)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] < num_frames or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{path}: expected at least {num_frames} labels of 0/1, got {labels.shape[0]} "
                         f"values in {np.unique(labels)[:5]}")
    return labels[:num_frames].astype(np.uint8)
