"""Optical flow between consecutive frames: TV-L1 (Zach et al., the paper's choice) by default.

TV-L1 comes from OpenCV's contrib module (`opencv-contrib-python-headless`, cv2.optflow);
Farneback is offered as a named alternative only, never as a silent fallback.
"""
from __future__ import annotations

import cv2
import numpy as np
from tqdm import tqdm

FLOW_METHODS = ("tvl1", "farneback")


def _gray(frame: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey frame from (H, W), (H, W, 1) or (H, W, 3) uint8 RGB."""
    if frame.ndim == 3 and frame.shape[-1] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if frame.ndim == 3 and frame.shape[-1] == 1:
        return frame[..., 0]
    if frame.ndim == 2:
        return frame
    raise ValueError(f"expected a frame of shape (H, W[, 1|3]), got {frame.shape}")


def tvl1_estimator():
    """OpenCV's dual TV-L1 estimator; explains how to get it if the wheel lacks cv2.optflow."""
    if not hasattr(cv2, "optflow"):
        raise ImportError(
            "TV-L1 optical flow needs OpenCV's contrib modules (cv2.optflow); install "
            "opencv-contrib-python-headless of the same version as opencv-python-headless")
    return cv2.optflow.DualTVL1OpticalFlow_create()


def frame_flow(frame0: np.ndarray, frame1: np.ndarray, method: str = "tvl1", estimator=None) -> np.ndarray:
    """Flow (H, W, 2) float32 (dx, dy) in pixels such that frame1[y + dy, x + dx] ~ frame0[y, x]."""
    g0, g1 = _gray(frame0), _gray(frame1)
    if method == "tvl1":
        estimator = estimator or tvl1_estimator()
        return estimator.calc(g0, g1, None).astype(np.float32)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(g0, g1, None, 0.5, 3, 15, 3, 5, 1.2, 0).astype(np.float32)
    raise ValueError(f"unknown flow method {method!r}; expected one of {FLOW_METHODS}")


def video_flow(frames: np.ndarray, method: str = "tvl1", progress: bool = False) -> np.ndarray:
    """Flows (N-1, H, W, 2) float32 between consecutive frames of (N, H, W[, C]) uint8 frames."""
    if len(frames) < 2:
        raise ValueError(f"need at least 2 frames for optical flow, got {len(frames)}")
    estimator = tvl1_estimator() if method == "tvl1" else None
    pairs = range(len(frames) - 1)
    flows = [frame_flow(frames[i], frames[i + 1], method, estimator)
             for i in tqdm(pairs, desc=f"{method} flow", disable=not progress, leave=False)]
    return np.stack(flows)
