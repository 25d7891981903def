"""GV-VAD video filtering: keep a generated video when CLIP says it shows its description.

The text-video score of a video is the mean, over ``num_samples`` frames sampled uniformly in
time, of the cosine similarity between the frame's CLIP image embedding and the CLIP text
embedding of the description the video was generated from. A video is kept when its score
is at least ``threshold`` (GV-VAD, Table II "video filtering"; the paper does not publish its
threshold, see docs/gvvad.md for ours).

Scores are the expensive part, so they are cached one file per video
(``<out_dir>/scores/<id>.json``, resumable and sharded like every worker); the decision is
cheap and is recomputed from the cached scores with the current threshold, so changing the
threshold never needs rescoring. When every video has a score, ``<out_dir>/decisions.jsonl``
is written: one line per video, kept and rejected alike, with its score, and
``<out_dir>/summary.json`` with counts per kind and class.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from generation import media, workers
from generation.step_settings import add_flags, from_args, setting

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # CLIP-L, GV-VAD's encoder
DEFAULT_THRESHOLD = 0.22
DEFAULT_SAMPLES = 8


def sample_frame_indices(num_frames: int, count: int) -> np.ndarray:
    """`count` frame indices spread uniformly over a video (centres of equal parts; all if fewer)."""
    if num_frames < 1:
        raise ValueError("cannot sample frames of an empty video")
    if num_frames <= count:
        return np.arange(num_frames)
    return np.floor((np.arange(count) + 0.5) * num_frames / count).astype(int)


def text_video_score(frame_embeddings: np.ndarray, text_embedding: np.ndarray) -> float:
    """Mean over frames of cos(frame embedding, text embedding); inputs need not be normalised."""
    frames = np.asarray(frame_embeddings, np.float64)
    text = np.asarray(text_embedding, np.float64).reshape(-1)
    if frames.ndim != 2 or frames.shape[1] != text.shape[0]:
        raise ValueError(f"frame embeddings {frames.shape} and text embedding {text.shape} do not match")
    frames = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)
    text = text / max(np.linalg.norm(text), 1e-12)
    return float(np.mean(frames @ text))


def decide(scores: Mapping[str, float], threshold: float) -> dict[str, bool]:
    """Keep (True) every video whose score is at least `threshold`."""
    return {video_id: bool(score >= threshold) for video_id, score in scores.items()}


def score_video(clip, path: str | Path, num_frames: int, text: str,
                num_samples: int = DEFAULT_SAMPLES) -> float:
    """The CLIP text-video score of the video at `path` (of `num_frames` frames) for `text`."""
    frames = media.read_frames(path, sample_frame_indices(num_frames, num_samples))
    return text_video_score(clip.encode_images(frames), clip.encode_texts([text])[0])


def generated_items(videos_dir: str | Path) -> list[dict]:
    """The metadata of every finished video of a t2v folder (its `<id>.json` files)."""
    videos_dir = Path(videos_dir)
    items = []
    for path in sorted(videos_dir.glob("*.json")):
        if path.name.startswith("."):  # a temporary file of a t2v worker still writing
            continue
        item = _read_json(path)
        missing = [key for key in ("id", "video", "text", "num_frames", "label", "anomaly_class")
                   if key not in item]
        if missing:
            raise ValueError(f"{path}: not t2v metadata (fields {missing} are missing)")
        items.append(item)
    if not items:
        raise FileNotFoundError(f"{videos_dir}: no generated videos (<id>.json + <id>.mp4) found")
    return items


def write_decisions(out_dir: Path, videos_dir: Path, items: Sequence[Mapping[str, Any]],
                    threshold: float) -> dict:
    """Decide every scored video with `threshold`; write decisions.jsonl and summary.json."""
    scores = {}
    for item in items:
        scores[item["id"]] = _read_json(workers.metadata_path(out_dir / "scores", item["id"]))["score"]
    kept = decide(scores, threshold)
    rows, counts = [], collections.defaultdict(lambda: {"kept": 0, "rejected": 0})
    for item in items:
        row = {key: item[key] for key in ("id", "kind", "label", "anomaly_class", "pair_id",
                                          "text", "video", "num_frames") if key in item}
        row.update(path=str((videos_dir / item["video"]).resolve()), score=scores[item["id"]],
                   threshold=threshold, kept=kept[item["id"]])
        rows.append(row)
        counts[f"{item.get('kind', '?')}/{item.get('anomaly_class', '?')}"][
            "kept" if row["kept"] else "rejected"] += 1
    workers.write_jsonl(out_dir / "decisions.jsonl", rows)
    summary = {"threshold": threshold, "videos": len(rows), "kept": sum(kept.values()),
               "rejected": len(rows) - sum(kept.values()), "by_kind_and_class": dict(sorted(counts.items()))}
    workers.atomic_write_json(out_dir / "summary.json", summary)
    return summary


def _read_json(path: Path) -> dict:
    """Read one JSON object, naming the file on failure."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read JSON ({error})") from error


@dataclasses.dataclass
class FilterSettings:
    """Which CLIP scores the videos and where the keep/reject line is."""

    threshold: float = setting(DEFAULT_THRESHOLD, "minimum mean frame-text cosine similarity to keep a video")
    clip_model: str = setting(DEFAULT_CLIP, "CLIP hub id, local folder or 'tiny'")
    clip_backend: str = setting("transformers", "CLIP implementation (see generation/clip.py)",
                                choices=("transformers", "open_clip"))
    num_samples: int = setting(DEFAULT_SAMPLES, "frames sampled uniformly per video")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")


def load_clip(settings: FilterSettings):
    """The CLIP encoder that scores the videos."""
    from generation.clip import ClipEncoder

    return ClipEncoder(settings.clip_model, settings.clip_backend, workers.resolve_device(settings.device))


def run_filter(settings: FilterSettings, *, videos_dir: str, out_dir: str, shard_index: int = 0,
               num_shards: int = 1) -> dict | None:
    """Score this shard's videos, then (once all are scored) decide them; return the summary."""
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    items = generated_items(videos_dir)
    scores_dir = out_dir / "scores"
    mine = workers.items_for_shard(items, shard_index, num_shards)
    todo = [item for item in mine if not workers.metadata_path(scores_dir, item["id"]).exists()]
    clip = load_clip(settings) if todo else None

    def score_one(item):
        score = score_video(clip, videos_dir / item["video"], item["num_frames"], item["text"],
                            settings.num_samples)
        workers.atomic_write_json(workers.metadata_path(scores_dir, item["id"]), {
            "id": item["id"], "score": score, "clip": clip.name, "num_samples": settings.num_samples})

    summary = workers.run_items(mine, score_one, out_dir=scores_dir,
                                desc=f"gvvad filter {shard_index}/{num_shards}")
    print(f"gvvad filter: {summary}")
    missing = [item["id"] for item in items if not workers.metadata_path(scores_dir, item["id"]).exists()]
    if missing:
        print(f"gvvad filter: {len(missing)} of {len(items)} videos have no score yet (other shards "
              f"or failures, see {scores_dir / 'errors.jsonl'}); decisions are written once all do")
        return None
    result = write_decisions(out_dir, videos_dir, items, settings.threshold)
    print(f"gvvad filter: kept {result['kept']} of {result['videos']} videos at threshold "
          f"{settings.threshold} -> {out_dir / 'decisions.jsonl'}")
    return result


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `gvvad-filter` subcommand."""
    parser = subparsers.add_parser(
        "gvvad-filter", help="GV-VAD: keep videos whose CLIP text-video similarity passes a threshold",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos-dir", required=True, help="gvvad-t2v output folder")
    parser.add_argument("--out-dir", required=True,
                        help="folder for scores/<id>.json, decisions.jsonl and summary.json")
    add_flags(parser, FilterSettings)
    workers.add_shard_args(parser)

    def main(args) -> int:
        index, count = workers.resolve_shard(args)
        run_filter(from_args(FilterSettings, args), videos_dir=args.videos_dir, out_dir=args.out_dir,
                   shard_index=index, num_shards=count)
        return 0  # failures are in scores/errors.jsonl; decisions wait for every score

    parser.set_defaults(func=main)
    return parser
