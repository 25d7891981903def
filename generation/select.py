"""`pavad-gen select`: pick class-relevant initial images from normal videos with CLIP (CA-PAG).

PA-VAD Sec. 3.1.1 / supp. S1.1. Every candidate frame I (sampled from the normal training
videos) is scored for class c as

    s(I, c) = <v(I), t(concat(x_c, g_pos))> - lambda * agg_n <v(I), t(n)>      (Eq. 2-4)

with unit-normalised CLIP embeddings v, t, the class text x_c joined with its positive
phrases, and the negative phrases n (shared nuisances such as black screens and logos plus
the class's own) aggregated by their mean (or max). The Top-K frames per class become the
initial images of the pseudo-abnormal clips; the "normal" entry of the class file gets its
own Top-K for the pseudo-normal clips.

Optional scene balancing (the paper's two stages): before scoring, each scene s keeps
~count(s)^alpha of its frames (scaled so that the smallest scene keeps all of them: alpha=1
changes nothing, alpha=0 gives every scene as many frames as the smallest); after scoring,
each class reserves the best `scene_quota` frames of every scene and fills the remaining
slots by global rank.

Work is split in two phases. Embedding: one item per video, sharded over workers, cached
under ``<workdir>/clip_cache/<model>/<video>.npz`` (keyed by model and frame index). Ranking:
once every video is embedded, the shard that finds them all writes
``<workdir>/init_images/<id>.png`` and ``<workdir>/plan.jsonl``, one line per clip to make:
``{id, class, text, kind, image, score, scene, video, frame}`` (``image`` is relative to the
plan's folder; kind is "abnormal" or "normal").
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.resources
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from generation import media, workers
from generation.models import model_key, slug
from generation.step_settings import add_flags, from_args, setting

CLASS_FILES = ("sht", "ucf")
DEFAULT_SCENE_REGEX = r"^(\d+)_"  # ShanghaiTech names videos <scene>_<clip>, e.g. 01_0014


# --------------------------------------------------------------------------- class files

def load_class_file(name_or_path: str) -> dict:
    """A class file by short name ("sht", "ucf") or path, checked field by field."""
    if name_or_path in CLASS_FILES:
        resource = importlib.resources.files("generation") / "classes" / f"{name_or_path}.json"
        source, text = f"generation/classes/{name_or_path}.json", resource.read_text("utf-8")
    else:
        source, text = str(name_or_path), Path(name_or_path).read_text("utf-8")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON ({error})") from None
    _check_class_file(spec, source)
    return spec


def _check_class_file(spec: dict, source: str) -> None:
    """Raise a ValueError naming the file and field that is missing or of the wrong type."""
    def need(entry, field, kind, where):
        if not isinstance(entry.get(field), kind):
            raise ValueError(f"{source}: {where}.{field} must be a {kind.__name__}")

    need(spec, "negative", list, "top level")
    need(spec, "classes", list, "top level")
    need(spec, "normal", dict, "top level")
    entries = [("normal", spec["normal"])] + [(f"classes[{i}]", c) for i, c in enumerate(spec["classes"])]
    for where, entry in entries:
        need(entry, "name", str, where)
        need(entry, "text", str, where)
        need(entry, "positive", list, where)
        if "negative" in entry:
            need(entry, "negative", list, where)
    names = [slug(c["name"]) for c in spec["classes"]]
    if len(set(names)) != len(names) or "normal" in names:
        raise ValueError(f"{source}: class names must be distinct and not 'normal'")


def positive_text(entry: dict) -> str:
    """t_c = concat(x_c, g_pos): the class text followed by its positive phrases."""
    return ", ".join([entry["text"], *entry["positive"]])


def negative_phrases(spec: dict, entry: dict) -> list[str]:
    """g_neg of one class: the shared nuisance phrases plus the class's own."""
    return list(dict.fromkeys(spec["negative"] + entry.get("negative", [])))


# --------------------------------------------------------------------------- scoring

def class_scores(image_embeddings: np.ndarray, positive: np.ndarray, negatives: np.ndarray,
                 lam: float, aggregate: str = "mean") -> np.ndarray:
    """Eq. 4: s_pos - lambda * aggregated s_neg, for unit-normalised (N, D), (D,), (M, D)."""
    s_pos = image_embeddings @ positive
    s_neg = image_embeddings @ negatives.T if len(negatives) else np.zeros((len(image_embeddings), 1))
    agg = {"mean": np.mean, "max": np.max}[aggregate](s_neg, axis=1)
    return s_pos - lam * agg


def smooth_pool(scenes: list[str], alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a pool that keeps ~c * count(s)^alpha frames of scene s (c: smallest keeps all)."""
    by_scene = defaultdict(list)
    for index, scene in enumerate(scenes):
        by_scene[scene].append(index)
    smallest = min(len(v) for v in by_scene.values())
    scale = smallest ** (1.0 - alpha)
    keep = []
    for members in by_scene.values():
        quota = min(len(members), max(1, round(scale * len(members) ** alpha)))
        keep.extend(rng.choice(members, size=quota, replace=False).tolist())
    return np.sort(np.asarray(keep, dtype=np.int64))


def top_k_balanced(scores: np.ndarray, scenes: list[str], k: int, scene_quota: int = 0) -> list[int]:
    """Top-k indices by score, after reserving the best `scene_quota` of every scene."""
    order = np.argsort(-scores, kind="stable")
    chosen: list[int] = []
    if scene_quota > 0:
        taken = defaultdict(int)
        for index in order:  # best first, so each scene reserves its best frames
            if taken[scenes[index]] < scene_quota:
                taken[scenes[index]] += 1
                chosen.append(int(index))
        chosen = chosen[:k]  # more scenes than slots: the best reserved frames win
    chosen_set = set(chosen)
    for index in order:
        if len(chosen) >= k:
            break
        if int(index) not in chosen_set:
            chosen.append(int(index))
    return sorted(chosen, key=lambda i: -scores[i])


# --------------------------------------------------------------------------- candidates

def frame_indices(num_frames: int, frame_step: int, frames_per_video: int) -> list[int]:
    """Every `frame_step`-th frame, thinned to at most `frames_per_video` evenly spaced (0: all)."""
    indices = list(range(0, num_frames, max(1, frame_step)))
    if frames_per_video and len(indices) > frames_per_video:
        picks = np.linspace(0, len(indices) - 1, frames_per_video).round().astype(int)
        indices = [indices[i] for i in picks]
    return indices


def video_key(path: Path) -> str:
    """A stable, file-safe id of a video: its stem plus a hash of its absolute path."""
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{slug(path.stem)[:60]}-{digest}"


def scene_of(path: Path, scene_regex: str) -> str:
    """The scene of a video: group 1 of `scene_regex` on its file name, else its folder name."""
    match = re.search(scene_regex, path.name) if scene_regex else None
    return match.group(1) if match else path.parent.name


def embed_video(encoder, path: Path, *, frame_step: int, frames_per_video: int,
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-normalised CLIP embeddings of a video's sampled frames: (frame indices, (N, D) float32)."""
    indices = frame_indices(media.count_frames(path), frame_step, frames_per_video)
    if not indices:
        raise ValueError(f"{path}: no frames")
    wanted, batch, chunks = set(indices), [], []
    for index, frame in enumerate(media.iter_frames(path, stop=indices[-1] + 1)):  # one pass, a batch in memory
        if index in wanted:
            batch.append(frame)
        if len(batch) == batch_size or (batch and index == indices[-1]):
            chunks.append(encoder.encode_images(np.stack(batch), normalize=True))
            batch = []
    if sum(len(c) for c in chunks) != len(indices):
        raise ValueError(f"{path}: decoded fewer frames than its header declares")
    return np.asarray(indices, dtype=np.int64), np.concatenate(chunks).astype(np.float32)


# --------------------------------------------------------------------------- the step

def _embedding_items(videos: list[Path], scene_regex: str) -> list[dict]:
    """One work item per candidate video."""
    return [{"id": video_key(v), "video": str(v.resolve()), "scene": scene_of(v, scene_regex)}
            for v in videos]


def _load_embeddings(cache: Path, items: list[dict]):
    """Concatenate cached embeddings: (embeddings, per-frame [video, frame, scene] lists)."""
    embeddings, videos, frames, scenes = [], [], [], []
    for item in items:
        with np.load(cache / f"{item['id']}.npz") as data:
            embeddings.append(data["embeddings"])
            videos += [item["video"]] * len(data["frames"])
            frames += data["frames"].tolist()
            scenes += [item["scene"]] * len(data["frames"])
    return np.concatenate(embeddings), videos, frames, scenes


def _save_init_images(plan: list[dict], workdir: Path) -> None:
    """Decode each chosen frame once per video and save it as <workdir>/init_images/<id>.png."""
    from PIL import Image
    from tqdm.auto import tqdm

    by_video = defaultdict(list)
    for item in plan:
        by_video[item["video"]].append(item)
    for video, items in tqdm(by_video.items(), desc="select: init images", unit="video"):
        frames = media.read_frames(video, sorted({item["frame"] for item in items}))
        lookup = dict(zip(sorted({item["frame"] for item in items}), frames))
        for item in items:
            with workers.atomic_path(workdir / item["image"]) as tmp:
                Image.fromarray(lookup[item["frame"]]).save(tmp)


def _same_selection(plan_path: Path, plan: list[dict], workdir: Path) -> bool:
    """Whether `plan_path` already lists exactly these items (ignoring later steps' fields)."""
    if not plan_path.exists():
        return False
    existing = [{k: row.get(k) for k in plan[0]} for row in workers.read_jsonl(plan_path)] if plan else []
    return existing == plan and all((workdir / item["image"]).exists() for item in plan)


def rank_candidates(encoder, spec: dict, embeddings: np.ndarray, videos: list[str], frames: list[int],
                    scenes: list[str], *, top_k: int, normal_k: int, lam: float, neg_aggregate: str,
                    scene_alpha: float | None, scene_quota: int, seed: int) -> list[dict]:
    """Score the pool for every class (and "normal") and return the plan items, best first."""
    pool = np.arange(len(embeddings))
    if scene_alpha is not None:
        pool = smooth_pool(scenes, scene_alpha, np.random.default_rng(seed))
    pool_scenes = [scenes[i] for i in pool]
    entries = [(c, "abnormal", top_k) for c in spec["classes"]] + [(spec["normal"], "normal", normal_k)]
    plan = []
    for entry, kind, k in entries:
        positive = encoder.encode_texts([positive_text(entry)], normalize=True)[0]
        negatives = encoder.encode_texts(negative_phrases(spec, entry), normalize=True)
        scores = class_scores(embeddings[pool], positive, negatives, lam, neg_aggregate)
        for rank, local in enumerate(top_k_balanced(scores, pool_scenes, k, scene_quota)):
            index = int(pool[local])
            item_id = f"{slug(entry['name'])}-{rank:03d}"
            plan.append({"id": item_id, "class": entry["name"], "text": entry["text"], "kind": kind,
                         "image": f"init_images/{item_id}.png", "score": float(scores[local]),
                         "scene": scenes[index], "video": videos[index], "frame": frames[index]})
    return plan


@dataclasses.dataclass
class SelectSettings:
    """Which frames become initial images, and how they are scored (Eq. 2-4)."""

    videos: str = setting("", "normal training videos: a folder (recursive), a video, or a .txt/.list of paths")
    classes: str = setting("sht", "class file: 'sht', 'ucf' (shipped) or a path to a JSON file of the same shape")
    clip_backend: str = setting("open_clip", "open_clip (the paper's ViT-B/32; needs `pip install .[openclip]`) "
                                "or transformers", choices=("open_clip", "transformers"))
    clip_model: str | None = setting(None, "open_clip 'ARCH:PRETRAINED' (default ViT-B-32:openai) or a "
                                     "transformers id/path (default openai/clip-vit-base-patch32); 'tiny' = random")
    top_k: int = setting(10, "initial images (= clips) per anomaly class")
    normal_k: int = setting(50, "initial images for pseudo-normal clips")
    lam: float = setting(0.5, "lambda of Eq. 4, weight of the negative score")
    neg_aggregate: str = setting("mean", "how the negative similarities are aggregated", choices=("mean", "max"))
    frame_step: int = setting(16, "candidate every N-th frame")
    frames_per_video: int = setting(8, "at most K evenly spaced candidates per video (0: no limit)")
    scene_alpha: float | None = setting(None, "scene balancing before scoring: keep ~count(scene)^alpha frames "
                                        "(None: off)")
    scene_quota: int = setting(0, "scene balancing after scoring: frames reserved per scene and class (0: off)")
    scene_regex: str = setting(DEFAULT_SCENE_REGEX, "regex whose group 1 on the video file name is its scene "
                               "(else: its folder)")
    seed: int = setting(0, "seed of the scene sub-sampling")
    batch_size: int = setting(32, "frames per CLIP forward pass")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")


def run_select(settings: SelectSettings, *, workdir: str, shard: tuple[int, int] = (0, 1)) -> Path | None:
    """Embed this shard's videos, then (once all are embedded) rank and write plan.jsonl."""
    from generation.clip import ClipEncoder

    s = settings
    workdir = Path(workdir)
    spec = load_class_file(s.classes)
    video_paths = candidate_videos(s.videos)
    items = _embedding_items(video_paths, s.scene_regex)
    encoder = ClipEncoder(s.clip_model, s.clip_backend, workers.resolve_device(s.device))
    cache = workdir / "clip_cache" / model_key(encoder.name)
    recorded = {"model": encoder.name, "frame_step": s.frame_step, "frames_per_video": s.frames_per_video}

    def embedded(item):
        marker = workers.metadata_path(cache, item["id"])
        return marker.exists() and json.loads(marker.read_text())["settings"] == recorded

    def embed(item):
        indices, embeddings = embed_video(encoder, Path(item["video"]), frame_step=s.frame_step,
                                          frames_per_video=s.frames_per_video, batch_size=s.batch_size)
        with workers.atomic_path(cache / f"{item['id']}.npz") as tmp:
            np.savez(tmp, frames=indices, embeddings=embeddings)
        workers.atomic_write_json(workers.metadata_path(cache, item["id"]),
                                  {**item, "settings": recorded, "num_candidates": len(indices)})

    index, count = shard
    summary = workers.run_items(workers.items_for_shard(items, index, count), embed, out_dir=cache,
                                done=embedded, desc=f"select: CLIP embed (shard {index}/{count})")
    print(f"select: embedding {summary}")
    errors = cache / "errors.jsonl"
    failed = {row["id"] for row in workers.read_jsonl(errors)} if errors.exists() else set()
    ready = [item for item in items if embedded(item)]
    waiting = [item for item in items if not embedded(item) and item["id"] not in failed]
    if not ready and not waiting:
        raise RuntimeError(f"select: no video could be embedded; see {errors}")
    if waiting:
        print(f"select: {len(waiting)} videos are not embedded yet (other shards still running?); "
              "the plan is written by the run that finds all of them embedded")
        return None
    if len(ready) < len(items):
        print(f"select: leaving out {len(items) - len(ready)} videos that failed (see {errors})")
    embeddings, vids, frames, scenes = _load_embeddings(cache, ready)
    plan = rank_candidates(encoder, spec, embeddings, vids, frames, scenes, top_k=s.top_k, normal_k=s.normal_k,
                           lam=s.lam, neg_aggregate=s.neg_aggregate, scene_alpha=s.scene_alpha,
                           scene_quota=s.scene_quota, seed=s.seed)
    plan_path = workdir / "plan.jsonl"
    if _same_selection(plan_path, plan, workdir):
        # Keep the plan as it is: later steps (refine) may have added prompts to it.
        print(f"select: {plan_path} already holds this selection; left unchanged")
        return plan_path
    _save_init_images(plan, workdir)
    workers.write_jsonl(plan_path, plan)
    print(f"select: {len(plan)} items from {len(embeddings)} candidate frames -> {plan_path}")
    return plan_path


def candidate_videos(videos: str) -> list[Path]:
    """Candidate videos: a folder (recursive), a video, or a text file listing one path per line."""
    if not videos:
        raise ValueError("select: no candidate videos given: pass --videos (or set "
                         "--config.select.videos) to the folder of normal training videos")
    found = media.list_videos(videos)
    if not found:
        raise ValueError(f"{videos}: no candidate videos found")
    return found


def register(subparsers) -> None:
    """Add the `select` subcommand."""
    parser = subparsers.add_parser(
        "select", help="CLIP-based initial image selection (CA-PAG, Eq. 4)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="output folder (plan.jsonl, init_images/, clip_cache/)")
    add_flags(parser, SelectSettings)
    workers.add_shard_args(parser)
    parser.set_defaults(func=_main)


def _main(args) -> int:
    """Entry of `pavad-gen select`."""
    run_select(from_args(SelectSettings, args), workdir=args.workdir, shard=workers.resolve_shard(args))
    return 0
