"""Frame-level ground truth of test videos: one reader for every public form (numpy only).

Both sides import this module (as they import pavad_jax/shards.py): pavad_jax's importers
label the videos of a public feature release with it, generation's extractor the raw test
videos it turns into features. It imports numpy and the standard library only.

Forms, picked from the path (`read_ground_truth`):
- a temporal-annotation text file, abnormal intervals ``[start, end)`` in frames, ``-1`` for
  none: UCF-Crime's UCF_Annotation.txt ``Arson/Arson022_x264.mp4 8640 Arson 3500 4000 -1 -1``
  (path, frame count, class, intervals) or XD-Violence's XD_Annotation.txt ``name s1 e1 s2 e2 ...``;
- a folder of per-video frame masks ``<video>.npy`` or ``<video>_<anything>.npy``
  (ShanghaiTech's test_frame_mask/, UCF-Crime's single_gt/, XD-Violence's per_video_gt/);
- a pickled dict ``{video: per-frame labels}`` (ShanghaiTech's gt-sh2-dic.pickle);
- JSON ``{video: [0, 1, ...]}`` or ``{video: {"intervals": [[s, e], ...], "class": "Arson"}}``.

Videos are keyed by file stem (a video suffix such as ``.mp4`` removed, other dots kept:
XD-Violence names hold dots). `VideoTruth.frame_labels(n)` gives the labels of an n-frame
video by the convention of the public ground-truth files: a longer annotation is cut, a
shorter one padded with its last label.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pickle
import re

import numpy as np

from pavad_jax.shards import align_labels

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")


class GroundTruthError(ValueError):
    """Unreadable ground truth; the message names the file and the line or video."""


@dataclasses.dataclass(frozen=True)
class VideoTruth:
    """What the ground truth says about one video."""

    intervals: tuple[tuple[int, int], ...] = ()  # abnormal [start, end) frame intervals
    labels: np.ndarray | None = None  # per-frame 0/1 labels, when given frame by frame
    num_frames: int | None = None  # the frame count the annotation states (UCF-Crime's does)
    anomaly_class: str | None = None

    @property
    def abnormal(self) -> bool:
        """Whether any frame is abnormal."""
        return bool(self.intervals) or (self.labels is not None and bool(self.labels.any()))

    def frame_labels(self, length: int) -> np.ndarray:
        """uint8 labels of a `length`-frame video (cut, or padded with the last label)."""
        if self.labels is not None:
            return align_labels(self.labels, length)
        base = np.zeros(self.num_frames if self.num_frames is not None else length, np.uint8)
        for start, end in self.intervals:
            base[start:end] = 1
        return align_labels(base, length)


def video_stem(name: str | os.PathLike) -> str:
    """A video's file name without its directory or video suffix ('a.b_x264.mp4' -> 'a.b_x264')."""
    base = re.split(r"[\\/]", str(name))[-1]
    suffix = os.path.splitext(base)[1]
    return base[: -len(suffix)] if suffix.lower() in VIDEO_SUFFIXES else base


def find(truths: dict[str, VideoTruth], name: str, source: os.PathLike | str = "ground truth") -> VideoTruth | None:
    """The entry of video `name`: its own key, else the one key `<name>_<anything>`; None if absent."""
    if name in truths:
        return truths[name]
    matches = [key for key in truths if key.startswith(name + "_")]
    if len(matches) > 1:
        raise GroundTruthError(f"{source}: several ground-truth entries match video {name!r}: {matches[:4]}")
    return truths[matches[0]] if matches else None


def read_ground_truth(path: os.PathLike | str) -> dict[str, VideoTruth]:
    """Every video's ground truth in a file or folder of one of the forms above."""
    path = pathlib.Path(path)
    if path.is_dir():
        return {video_stem(f.stem): _per_frame(np.load(f), f, f.stem) for f in sorted(path.rglob("*.npy"))}
    suffix = path.suffix.lower()
    if not path.is_file():
        raise GroundTruthError(f"{path}: no such ground-truth file or folder")
    if suffix in (".pickle", ".pkl"):
        with open(path, "rb") as f:
            raw = pickle.load(f)
        if not isinstance(raw, dict):
            raise GroundTruthError(f"{path}: expected a pickled dict video -> labels, got {type(raw).__name__}")
        return {video_stem(name): _per_frame(labels, path, name) for name, labels in raw.items()}
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".txt":
        return read_temporal_annotations(path)
    raise GroundTruthError(f"{path}: unknown ground-truth form (a folder of .npy, .pickle/.pkl, .json or .txt)")


def _per_frame(labels, path, name) -> VideoTruth:
    """A VideoTruth of per-frame labels, checked to be a 1-D array of 0/1."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise GroundTruthError(f"{path}: labels of video {name!r} must be a 1-D array of 0/1, "
                               f"got shape {labels.shape} values {np.unique(labels)[:5]}")
    return VideoTruth(labels=labels.astype(np.uint8))


def _read_json(path: pathlib.Path) -> dict[str, VideoTruth]:
    """JSON {video: [0, 1, ...]} or {video: {"intervals": [[s, e], ...], "class": c}}."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise GroundTruthError(f"{path}: expected a JSON object {{video name: labels}}")
    out = {}
    for name, entry in raw.items():
        if isinstance(entry, list):
            out[video_stem(name)] = _per_frame(entry, path, name)
        elif isinstance(entry, dict) and "intervals" in entry:
            out[video_stem(name)] = VideoTruth(intervals=tuple((int(s), int(e)) for s, e in entry["intervals"]),
                                               anomaly_class=entry.get("class"))
        else:
            raise GroundTruthError(f"{path}: video {name!r}: expected a list of 0/1 or an object with 'intervals'")
    return out


def read_temporal_annotations(path: os.PathLike | str) -> dict[str, VideoTruth]:
    """UCF-Crime / XD-Violence temporal annotations (one video a line) -> {video: VideoTruth}."""
    truths = {}
    with open(path) as f:
        lines = [line.split() for line in f]
    for number, parts in enumerate(lines, 1):
        if not parts or parts[0].startswith("#"):
            continue
        num_frames, anomaly_class, bounds = None, None, parts[1:]
        if len(parts) >= 3 and not _is_int(parts[2]):  # UCF: path frames class s e s e
            num_frames, anomaly_class, bounds = parts[1], parts[2], parts[3:]
        try:
            num_frames = None if num_frames is None else int(num_frames)
            bounds = [int(b) for b in bounds]
        except ValueError as e:
            raise GroundTruthError(f"{path}: line {number}: cannot parse frame numbers ({e})") from None
        if len(bounds) % 2:
            raise GroundTruthError(f"{path}: line {number}: odd number of interval bounds")
        intervals = tuple((s, e) for s, e in zip(bounds[::2], bounds[1::2]) if s >= 0)
        truths[video_stem(parts[0])] = VideoTruth(intervals=intervals, num_frames=num_frames,
                                                  anomaly_class=anomaly_class)
    return truths


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?\d+", text) is not None
