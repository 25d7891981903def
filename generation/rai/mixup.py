"""Temporal pseudo-anomalies: mixup of a flow patch with another patch of the same flow.

Paper, section 3.3: the patch p' of the flow under the mask's box (mu_h x mu_w) is replaced by
p_hat = lam * p' + (1 - lam) * p'_r, where p'_r is a patch of the same size at a random place
in the same flow and lam ~ Beta(alpha, alpha), alpha = 0.4 as in mixup (Zhang et al.).
"""
from __future__ import annotations

import dataclasses

import numpy as np

ALPHA = 0.4


@dataclasses.dataclass(frozen=True)
class Mixup:
    """What one patch mixup did: the mixing weight and the two boxes (top, left, h, w)."""

    lam: float
    target_box: tuple[int, int, int, int]
    source_box: tuple[int, int, int, int]


def sample_lambda(rng: np.random.Generator, alpha: float = ALPHA) -> float:
    """Mixing weight lam ~ Beta(alpha, alpha)."""
    return float(rng.beta(alpha, alpha))


def random_source_box(height: int, width: int, box_h: int, box_w: int,
                      rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of the same size as the target at a uniformly random place inside the frame."""
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    return top, left, box_h, box_w


def patch_mixup(flow: np.ndarray, target_box: tuple[int, int, int, int], rng: np.random.Generator,
                alpha: float = ALPHA) -> tuple[np.ndarray, Mixup]:
    """Mixes the target patch of flow (..., H, W, 2) with a random same-size patch.

    Leading axes (e.g. the T flows of a clip) share one lam and one source box, so the
    distorted motion is consistent along the clip. Returns a new array; flow is unchanged.
    """
    height, width = flow.shape[-3:-1]
    top, left, box_h, box_w = target_box
    if box_h <= 0 or box_w <= 0 or top < 0 or left < 0 or top + box_h > height or left + box_w > width:
        raise ValueError(f"target box {target_box} does not fit a {height}x{width} flow")
    lam = sample_lambda(rng, alpha)
    source = random_source_box(height, width, box_h, box_w, rng)
    s_top, s_left = source[:2]
    mixed = flow.copy()
    target_patch = flow[..., top:top + box_h, left:left + box_w, :]
    source_patch = flow[..., s_top:s_top + box_h, s_left:s_left + box_w, :]
    mixed[..., top:top + box_h, left:left + box_w, :] = lam * target_patch + (1 - lam) * source_patch
    return mixed, Mixup(lam, (top, left, box_h, box_w), source)
