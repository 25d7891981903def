"""GV-VAD features: CLIP features per 16-frame segment, written as feature shards.

GV-VAD (Sec. III-A) cuts every video into 16-frame segments and describes each by CLIP-L
(768-d) features: here the CLIP image embeddings of the segment's frames (shorter side
resized to CLIP's input size, centre crop), averaged, so a video of F frames gives features
of shape (1, ceil(F / 16), D) (one crop; the last segment averages the frames it has). The
featuriser is `pavad-gen extract`'s CLIP one (generation/extract.py), so GV-VAD's synthetic
videos and real videos extracted by either step share one definition of the features.

Inputs are the kept videos of ``gvvad-filter`` (decisions.jsonl) and, optionally, real
videos listed in a JSON-lines file (``id``, ``path``, ``split`` train|test, ``label``,
``anomaly_class``, and for test videos ``abnormal_frames``: [[start, end), ...]).
Features are cached one ``<id>.npy`` per video (resumable); each worker then writes the
shard sets of its own slice (with ``--num-shards`` N > 1 their names end in
``-part-<i>-of-<N>``; readers collect every shard set below ``train/`` and ``test/``):

* ``<dataset>/train/gvvad-synthetic``: kept generated videos, ``source="pseudo"``;
  abnormal ones in stream ``abnormal`` with their class, normal ones in stream ``normal``.
  GV-VAD's synthetic normal videos are ordinary normal training data with a synthetic flag
  (they get the loss scale lambda like synthetic abnormal ones), *not* PA-VAD's
  ``pseudo-normal`` domain-alignment stream.
* ``<dataset>/train/real`` and ``<dataset>/test/real``: the real videos (``source="real"``;
  test records carry frame labels).

With captions enabled (`generation/gvvad/captions.py`, config section ``captions``) every record
also carries ``caption_embedding`` (T, E): the CLIP text embedding of a VLM caption of each
segment, cached as ``<id>.captions.npz``; and ``<dataset>/prompt_bank.npy`` holds LAP's prompts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from generation import workers
from generation.step_settings import add_flags, from_args, setting

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # CLIP-L: GV-VAD's 768-d features
SYNTHETIC_SET = "gvvad-synthetic"
REAL_SET = "real"
_REAL_FIELDS = ("id", "path", "split", "label", "anomaly_class")


# --------------------------------------------------------------------------- features

@dataclasses.dataclass
class FeatureSettings:
    """How GV-VAD's segment features are computed (`pavad-gen extract`'s CLIP featuriser, one centre crop)."""

    clip_model: str = setting(DEFAULT_CLIP, "CLIP hub id, local folder or 'tiny' (GV-VAD: CLIP-L, 768-d)")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")
    batch_size: int = setting(8, "16-frame segments per CLIP forward pass")
    dtype: str = setting("float16", "stored feature dtype", choices=("float16", "float32"))

    def extract(self):
        """The same features as `pavad-gen extract` settings: CLIP, shorter side to CLIP's size, centre crop."""
        from generation.extract import ExtractSettings

        return ExtractSettings(features="clip", protocol="shortside", crops="center", clip_model=self.clip_model,
                               device=self.device, batch_size=self.batch_size, dtype=self.dtype)


def clip_segment_featurizer(settings: FeatureSettings):
    """`pavad-gen extract`'s featuriser for these settings: (featurize, per-frame resize)."""
    from generation.extract import build_featurizer

    return build_featurizer(settings.extract())


def video_segment_features(path: str | Path, featurize, prepare, batch_size: int = 8) -> tuple[np.ndarray, int]:
    """Features (1, ceil(F / 16), D) float32 of a video file and its frame count F.

    Shared with `pavad-gen extract` (generation/extract.py): frames are streamed, the shorter
    side resized to CLIP's input size, centre-cropped, embedded, and averaged over the real
    frames of each 16-frame segment (the last segment may be shorter).
    """
    from generation.extract import video_features

    return video_features(path, featurize, prepare=prepare, batch_size=batch_size)


# --------------------------------------------------------------------------- inputs

def load_real_videos(path: str | Path) -> list[dict]:
    """Read and check a real-video list (JSON lines); errors name the file, line and field."""
    rows = workers.read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        where = f"{path}:{number}"
        missing = [key for key in _REAL_FIELDS if key not in row]
        if missing:
            raise ValueError(f"{where}: fields {missing} are missing")
        if row["split"] not in ("train", "test"):
            raise ValueError(f"{where}: field 'split' is {row['split']!r}, expected 'train' or 'test'")
        if row["label"] not in (0, 1):
            raise ValueError(f"{where}: field 'label' is {row['label']!r}, expected 0 or 1")
        if (row["label"] == 0) != (row["anomaly_class"] == "normal"):
            raise ValueError(f"{where}: field 'anomaly_class' is {row['anomaly_class']!r} "
                             f"but label is {row['label']} (normal videos have class 'normal')")
        for span in row.get("abnormal_frames", []):
            if len(span) != 2 or not 0 <= span[0] < span[1]:
                raise ValueError(f"{where}: field 'abnormal_frames' has {span!r}, expected [start, end)")
        if not Path(row["path"]).is_file():
            raise FileNotFoundError(f"{where}: field 'path': {row['path']} does not exist")
    workers.check_item_ids(rows, source=str(path))
    return rows



def synthetic_items(decisions_path: str | Path, videos_dir: str | Path | None = None) -> list[dict]:
    """The kept generated videos of a decisions.jsonl, as feature items (`videos_dir` overrides paths)."""
    items = []
    for row in workers.read_jsonl(decisions_path):
        if row.get("kept"):
            path = Path(videos_dir) / row["video"] if videos_dir else Path(row["path"])
            items.append({"id": row["id"], "path": str(path),
                          "split": "train", "label": int(row["label"]),
                          "anomaly_class": row["anomaly_class"], "source": "pseudo"})
    return items


# --------------------------------------------------------------------------- records

def to_record(item: Mapping[str, Any], features: np.ndarray, num_frames: int,
              segment_fields: Mapping[str, np.ndarray] | None = None):
    """The VideoRecord of one video (stream from label; test videos get frame labels)."""
    from pavad_jax.ground_truth import VideoTruth
    from pavad_jax.shards import VideoRecord

    labels = None
    if item["split"] == "test":
        spans = tuple(map(tuple, item.get("abnormal_frames", [])))
        labels = VideoTruth(intervals=spans).frame_labels(num_frames)
    return VideoRecord(
        id=item["id"], features=features, label=int(item["label"]),
        source=item.get("source", "real"), stream="abnormal" if item["label"] else "normal",
        anomaly_class=item["anomaly_class"], num_frames=int(num_frames), frame_labels=labels,
        segment_fields=dict(segment_fields or {}))


def write_dataset(items: Sequence[Mapping[str, Any]], cache_dir: Path, dataset_dir: Path,
                  settings: FeatureSettings, suffix: str = "", captions: bool = False) -> dict[str, int]:
    """Write shard sets `<split>/<set><suffix>` from cached features; return records per set."""
    from pavad_jax.shards import write_shard_set

    groups: dict[tuple[str, str], list] = {}
    for item in items:
        name = (SYNTHETIC_SET if item.get("source") == "pseudo" else REAL_SET) + suffix
        groups.setdefault((item["split"], name), []).append(item)
    counts = {}
    for (split, name), members in sorted(groups.items()):
        def records(members=members):
            for item in members:
                meta = json.loads(workers.metadata_path(cache_dir, item["id"]).read_text())
                features = np.load(cache_dir / f"{item['id']}.npy")
                fields = {}
                if captions:
                    from generation.gvvad.captions import caption_path, load_caption_embeddings

                    fields["caption_embedding"] = load_caption_embeddings(caption_path(cache_dir, item["id"]),
                                                                          features.shape[1])
                yield to_record(item, features, meta["num_frames"], fields)

        write_shard_set(dataset_dir / split / name, records(), dtype=settings.dtype, overwrite=True,
                        **settings.extract().provenance())
        counts[f"{split}/{name}"] = len(members)
    return counts


def run_features(settings: FeatureSettings, *, dataset_dir: str, cache_dir: str, decisions: str | None = None,
                 videos_dir: str | None = None, real_videos: str | None = None, shard_index: int = 0,
                 num_shards: int = 1, captions=None) -> dict | None:
    """Cache this shard's segment features (and, with `captions` (CaptionSettings) enabled, the
    segments' caption embeddings and the prompt bank), then write its shard sets; return records per set."""
    items = []
    if decisions:
        items += synthetic_items(decisions, videos_dir)
    if real_videos:
        items += load_real_videos(real_videos)
    if not items:
        raise ValueError("gvvad features: nothing to extract (no kept videos and no real videos)")
    workers.check_item_ids(items, source="gvvad features")
    cache_dir, dataset_dir = Path(cache_dir), Path(dataset_dir)
    mine = workers.items_for_shard(items, shard_index, num_shards)
    captioned = captions is not None and captions.enabled
    if captioned:
        from generation.gvvad import captions as caption_module

    def done(item) -> bool:
        return workers.metadata_path(cache_dir, item["id"]).exists() and (
            not captioned or caption_module.caption_path(cache_dir, item["id"]).exists())

    todo = [item for item in mine if not done(item)]
    featurize, prepare = clip_segment_featurizer(settings) if todo else (None, None)
    captioner = None
    if captioned and (todo or not (dataset_dir / caption_module.PROMPT_BANK_FILE).exists()):
        captioner = caption_module.Captioner(captions, workers.resolve_device(captions.device))
        dataset_dir.mkdir(parents=True, exist_ok=True)
        workers.atomic_save_npy(dataset_dir / caption_module.PROMPT_BANK_FILE, captioner.prompt_bank())

    def extract(item):
        features, num_frames = video_segment_features(item["path"], featurize, prepare, settings.batch_size)
        if captioned:
            texts, embeddings = captioner.caption_video(item["path"], num_frames, features.shape[1])
            caption_module.save_captions(caption_module.caption_path(cache_dir, item["id"]), texts, embeddings)
        workers.atomic_save_npy(cache_dir / f"{item['id']}.npy", features)
        workers.atomic_write_json(workers.metadata_path(cache_dir, item["id"]), {
            "id": item["id"], "path": item["path"], "num_frames": num_frames,
            "shape": list(features.shape), "clip": settings.clip_model})

    summary = workers.run_items(mine, extract, out_dir=cache_dir,
                                desc=f"gvvad features {shard_index}/{num_shards}")
    print(f"gvvad features: {summary}")
    if summary.failed:
        print(f"gvvad features: {len(summary.failed)} videos failed (see {cache_dir / 'errors.jsonl'}); "
              "this worker's shard sets are written once a rerun extracts them")
        return None
    # Each worker writes the shard sets of its own slice; readers find them all below <split>/.
    suffix = f"-part-{shard_index}-of-{num_shards}" if num_shards > 1 else ""
    counts = write_dataset(mine, cache_dir, dataset_dir, settings, suffix=suffix, captions=captioned)
    print(f"gvvad features: wrote {counts} -> {dataset_dir}")
    return counts


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `gvvad-extract` subcommand."""
    parser = subparsers.add_parser(
        "gvvad-extract", help="GV-VAD: CLIP features per 16-frame segment, written as feature shards",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", required=True, help="output dataset (train/ and test/ shard sets)")
    parser.add_argument("--cache-dir", required=True, help="per-video feature cache (<id>.npy)")
    parser.add_argument("--decisions", default=None, help="gvvad-filter decisions.jsonl (kept videos)")
    parser.add_argument("--videos-dir", default=None, help="gvvad-t2v folder, if moved since filtering (default: the paths in decisions.jsonl)")
    parser.add_argument("--real-videos", default=None,
                        help="JSON lines of real videos: id, path, split, label, anomaly_class, abnormal_frames")
    add_flags(parser, FeatureSettings)
    workers.add_shard_args(parser)

    def main(args) -> int:
        index, count = workers.resolve_shard(args)
        run_features(from_args(FeatureSettings, args), dataset_dir=args.dataset_dir, cache_dir=args.cache_dir,
                     decisions=args.decisions, videos_dir=args.videos_dir, real_videos=args.real_videos,
                     shard_index=index, num_shards=count)
        return 0  # failures are in <cache-dir>/errors.jsonl; shards wait for every video

    parser.set_defaults(func=main)
    return parser
