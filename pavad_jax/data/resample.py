"""UR-DMU's fixed-length resampling of a variable-length feature sequence (numpy only).

The reference (``process_feat`` in the UR-DMU / RTFM loaders) does, for a video of n snippets::

    r = np.linspace(0, n, T + 1, dtype=int)
    segment i = np.mean(feat[r[i]:r[i+1]], 0)   if r[i] != r[i+1]
              = feat[r[i]]                      otherwise (an empty bin, only when n < T)

`resample_segments` computes the same thing with one vector add per row of the longest bin
instead of a Python loop over T bins, and is bit-identical to that loop: np.mean over axis 0
adds the rows in order in float32 and divides the float32 sum by an integer count in float64
(numpy promotes float32 / intp), which is what is done here.

Edge case: for i < T, r[i] = floor(i * n / T) < n, so ``feat[r[i]]`` never indexes past the
end (checked for n up to 5000 and several T in tests); the clamp below only guards that.
"""
from __future__ import annotations

import functools

import numpy as np


def segment_bounds(length: int, segments: int) -> np.ndarray:
    """The reference bin edges: linspace(0, length, segments + 1) cast to int, (segments + 1,)."""
    return np.linspace(0, length, segments + 1, dtype=int)


@functools.lru_cache(maxsize=4096)
def _plan(length: int, segments: int) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """Bin starts, the bins still open at each row offset 1.., multi-row bins and their sizes."""
    bounds = segment_bounds(length, segments)
    starts = np.minimum(bounds[:-1], length - 1)  # a no-op (r[i] < n for i < T), kept as a guard
    counts = np.diff(bounds)
    open_bins = tuple(np.flatnonzero(counts > offset) for offset in range(1, int(counts.max())))
    multi = np.flatnonzero(counts > 1)
    return starts, open_bins, multi, counts[multi, None].astype(np.float64)


def resample_segments(features: np.ndarray, segments: int) -> np.ndarray:
    """Resample (..., n, D) features along time to (..., segments, D) float32, as the reference."""
    features = np.asarray(features, np.float32)
    if features.ndim < 2:
        raise ValueError(f"resample_segments: features must be (..., n, D), got shape {features.shape}")
    length = features.shape[-2]
    if length == 0:
        raise ValueError(f"resample_segments: features have no time steps (shape {features.shape})")
    if segments <= 0:
        raise ValueError(f"resample_segments: segments must be > 0, got {segments}")
    starts, open_bins, multi, sizes = _plan(length, segments)
    # Row 0 of every bin; an empty bin keeps it, which is the reference's feat[r[i]].
    out = features[..., starts, :]
    for offset, bins in enumerate(open_bins, start=1):
        out[..., bins, :] += features[..., starts[bins] + offset, :]
    out[..., multi, :] = out[..., multi, :] / sizes
    return out
