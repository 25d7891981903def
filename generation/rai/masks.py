"""Inpainting masks: random boxes, LaMa-style irregular masks, and given segmentation masks.

Every mask is a (H, W) bool array, True where the image is to be inpainted. The LaMa-style
generator follows the recipe of Suvorov et al. (LaMa): a few thick irregular strokes (random
walks of line segments drawn with a thick round brush) plus a few axis-aligned boxes.
"""
from __future__ import annotations

import pathlib

import cv2
import numpy as np

MASK_TYPES = ("box", "lama", "segmentation")


def random_box_mask(height: int, width: int, rng: np.random.Generator,
                    min_frac: float = 0.15, max_frac: float = 0.4) -> np.ndarray:
    """One axis-aligned box whose sides are min_frac..max_frac of the frame's sides."""
    box_h = max(1, int(round(height * rng.uniform(min_frac, max_frac))))
    box_w = max(1, int(round(width * rng.uniform(min_frac, max_frac))))
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    mask = np.zeros((height, width), bool)
    mask[top:top + box_h, left:left + box_w] = True
    return mask


def _draw_stroke(canvas: np.ndarray, rng: np.random.Generator, max_vertices: int,
                 max_length: float, max_width: int) -> None:
    """Draws one random walk of thick line segments onto canvas (uint8, in place)."""
    height, width = canvas.shape
    y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
    brush = int(rng.integers(max(2, max_width // 3), max_width + 1))
    for _ in range(int(rng.integers(1, max_vertices + 1))):
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(max_length / 4, max_length)
        ny = int(np.clip(y + length * np.sin(angle), 0, height - 1))
        nx = int(np.clip(x + length * np.cos(angle), 0, width - 1))
        cv2.line(canvas, (x, y), (nx, ny), 1, brush)
        cv2.circle(canvas, (nx, ny), brush // 2, 1, -1)
        y, x = ny, nx


def lama_mask(height: int, width: int, rng: np.random.Generator, max_strokes: int = 4,
              max_boxes: int = 2, max_vertices: int = 6, max_coverage: float = 0.5) -> np.ndarray:
    """LaMa-style irregular mask: 1..max_strokes thick strokes plus 0..max_boxes boxes.

    Brush width and stroke length scale with the frame size, so the same settings work for
    64x64 test frames and 256x256 dataset frames. Draws are repeated (at most 10 times) until
    the mask covers at most max_coverage of the frame.
    """
    side = min(height, width)
    for _ in range(10):
        canvas = np.zeros((height, width), np.uint8)
        for _ in range(int(rng.integers(1, max_strokes + 1))):
            _draw_stroke(canvas, rng, max_vertices, max_length=side / 3, max_width=max(3, side // 8))
        for _ in range(int(rng.integers(0, max_boxes + 1))):
            canvas |= random_box_mask(height, width, rng, 0.1, 0.3).astype(np.uint8)
        mask = canvas.astype(bool)
        if mask.mean() <= max_coverage:
            return mask
    return mask


def segmentation_mask(segmentation: np.ndarray, labels: tuple[int, ...] | None = None,
                      dilate: int = 0) -> np.ndarray:
    """Mask from a label map (H, W): pixels of the given labels (any non-zero label if None)."""
    if segmentation.ndim != 2:
        raise ValueError(f"segmentation map must be (H, W), got shape {segmentation.shape}")
    mask = segmentation > 0 if labels is None else np.isin(segmentation, labels)
    if dilate > 0:
        kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
        mask = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    return mask


def load_segmentation_mask(path: str | pathlib.Path, height: int, width: int) -> np.ndarray:
    """Reads a mask image or .npy label map and resizes it (nearest) to (height, width)."""
    path = pathlib.Path(path)
    if path.suffix == ".npy":
        seg = np.load(path)
    else:
        seg = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if seg is None:
            raise ValueError(f"{path}: not a readable mask image")
    if seg.ndim != 2:
        raise ValueError(f"{path}: segmentation mask must be 2-D (H, W), got shape {seg.shape}")
    seg = cv2.resize(seg.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return segmentation_mask(seg)


def make_mask(kind: str, height: int, width: int, rng: np.random.Generator,
              segmentation: np.ndarray | None = None) -> np.ndarray:
    """Dispatches on kind ('box', 'lama' or 'segmentation'); segmentation needs a label map."""
    if kind == "box":
        return random_box_mask(height, width, rng)
    if kind == "lama":
        return lama_mask(height, width, rng)
    if kind == "segmentation":
        if segmentation is None:
            raise ValueError("mask type 'segmentation' needs a segmentation map (--segmentation-dir)")
        return segmentation_mask(segmentation)
    raise ValueError(f"unknown mask type {kind!r}; expected one of {MASK_TYPES}")


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, left, height, width) of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("mask is empty: no box to take")
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
