"""Video files: list them, read frames (PyAV), write MP4 atomically, fit images to a size."""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from generation.workers import atomic_path

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")


def list_videos(root: str | os.PathLike) -> list[Path]:
    """Every video file under `root` (recursive), sorted; `root` may also be one file."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode a video's frames in order as (H, W, 3) uint8 RGB arrays."""
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: cannot decode video ({error})") from error


def read_frames(path: str | os.PathLike, indices: Sequence[int] | None = None) -> np.ndarray:
    """Frames of a video as (T, H, W, 3) uint8: all of them, or those at `indices` (in that order)."""
    wanted = None if indices is None else {int(i) for i in indices}
    frames, decoded = {}, 0
    for index, frame in enumerate(iter_frames(path)):
        decoded = index + 1
        if wanted is None or index in wanted:
            frames[index] = frame
        if wanted is not None and len(frames) == len(wanted):
            break  # no need to decode the rest
    if wanted is not None and len(frames) < len(wanted):
        missing = sorted(wanted - set(frames))
        raise ValueError(f"{path}: frames {missing[:5]} not found (the video has {decoded} frames)")
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    order = sorted(frames) if indices is None else [int(i) for i in indices]
    return np.stack([frames[i] for i in order])


def video_fps(path: str | os.PathLike) -> float:
    """The average frame rate a video's stream declares."""
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 0.0


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 16.0, crf: int = 18) -> None:
    """Write (T, H, W, 3) uint8 frames as H.264 MP4 (yuv420p), atomically."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264 with yuv420p needs even height and width, got {height}x{width}")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop `image` to the width:height aspect ratio, then resize to (width, height)."""
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = round(width / scale), round(height / scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)


def to_uint8_frames(video: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] float (T, H, W, 3) to uint8."""
    return (np.clip(np.asarray(video, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames: the stream header's count, else counted from the packets (no decoding)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: cannot read video ({error})") from error
