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
import hashlib
import importlib.resources
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from generation import workers
from generation.models import model_key, slug

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
    """CLIP embeddings of a video's sampled frames: (frame indices, (N, D) float32)."""
    from PIL import Image

    from generation.video_io import count_frames, iter_frames

    indices = frame_indices(count_frames(path), frame_step, frames_per_video)
    if not indices:
        raise ValueError(f"{path}: no frames")
    wanted, batch, chunks = set(indices), [], []
    for index, frame in enumerate(iter_frames(path)):  # one pass, a batch of frames in memory
        if index in wanted:
            batch.append(Image.fromarray(frame))
        if len(batch) == batch_size or (batch and index == indices[-1]):
            chunks.append(encoder.encode_images(batch))
            batch = []
        if index == indices[-1]:
            break
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

    from generation.video_io import read_frames

    by_video = defaultdict(list)
    for item in plan:
        by_video[item["video"]].append(item)
    for video, items in tqdm(by_video.items(), desc="select: init images", unit="video"):
        frames = read_frames(video, sorted({item["frame"] for item in items}))
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
        positive = encoder.encode_texts([positive_text(entry)])[0]
        negatives = encoder.encode_texts(negative_phrases(spec, entry))
        scores = class_scores(embeddings[pool], positive, negatives, lam, neg_aggregate)
        for rank, local in enumerate(top_k_balanced(scores, pool_scenes, k, scene_quota)):
            index = int(pool[local])
            item_id = f"{slug(entry['name'])}-{rank:03d}"
            plan.append({"id": item_id, "class": entry["name"], "text": entry["text"], "kind": kind,
                         "image": f"init_images/{item_id}.png", "score": float(scores[local]),
                         "scene": scenes[index], "video": videos[index], "frame": frames[index]})
    return plan


def run_select(*, videos: str, workdir: str, classes: str = "sht", clip_backend: str = "open_clip",
               clip_model: str | None = None, top_k: int = 10, normal_k: int = 50, lam: float = 0.5,
               neg_aggregate: str = "mean", frame_step: int = 16, frames_per_video: int = 8,
               scene_alpha: float | None = None, scene_quota: int = 0,
               scene_regex: str = DEFAULT_SCENE_REGEX, seed: int = 0, batch_size: int = 32,
               device: str = "cpu", shard: tuple[int, int] = (0, 1)) -> Path | None:
    """Embed this shard's videos, then (once all are embedded) rank and write plan.jsonl."""
    from generation.models import load_clip

    workdir = Path(workdir)
    spec = load_class_file(classes)
    video_paths = candidate_videos(videos)
    items = _embedding_items(video_paths, scene_regex)
    encoder = load_clip(clip_model, clip_backend, device)
    cache = workdir / "clip_cache" / model_key(encoder.name)
    settings = {"model": encoder.name, "frame_step": frame_step, "frames_per_video": frames_per_video}

    def embedded(item):
        marker = workers.metadata_path(cache, item["id"])
        return marker.exists() and json.loads(marker.read_text())["settings"] == settings

    def embed(item):
        indices, embeddings = embed_video(encoder, Path(item["video"]), frame_step=frame_step,
                                          frames_per_video=frames_per_video, batch_size=batch_size)
        with workers.atomic_path(cache / f"{item['id']}.npz") as tmp:
            np.savez(tmp, frames=indices, embeddings=embeddings)
        workers.atomic_write_json(workers.metadata_path(cache, item["id"]),
                                  {**item, "settings": settings, "num_candidates": len(indices)})

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
    plan = rank_candidates(encoder, spec, embeddings, vids, frames, scenes, top_k=top_k,
                           normal_k=normal_k, lam=lam, neg_aggregate=neg_aggregate,
                           scene_alpha=scene_alpha, scene_quota=scene_quota, seed=seed)
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
    """Candidate videos: a folder (recursive) or a text file listing one path per line."""
    from generation.video_io import list_videos

    if not videos:
        raise ValueError("select: no candidate videos given: pass --videos (or set "
                         "--config.select.videos) to the folder of normal training videos")
    path = Path(videos)
    if path.is_file() and path.suffix in (".txt", ".list"):
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        found = [Path(line) if Path(line).is_absolute() else path.parent / line for line in lines]
    else:
        found = list_videos(path)
    if not found:
        raise ValueError(f"{videos}: no candidate videos found")
    return found


def register(subparsers) -> None:
    """Add the `select` subcommand."""
    parser = subparsers.add_parser(
        "select", help="CLIP-based initial image selection (CA-PAG, Eq. 4)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", required=True,
                        help="folder of normal training videos (recursive), or a .txt/.list of paths")
    parser.add_argument("--workdir", required=True, help="output folder (plan.jsonl, init_images/, clip_cache/)")
    parser.add_argument("--classes", default="sht",
                        help="class file: 'sht', 'ucf' (shipped) or a path to a JSON file of the same shape")
    parser.add_argument("--clip-backend", choices=["open_clip", "transformers"], default="open_clip",
                        help="open_clip (the paper's ViT-B/32; needs `pip install .[openclip]`) or "
                             "transformers CLIPModel")
    parser.add_argument("--clip-model", default=None,
                        help="open_clip 'ARCH:PRETRAINED' (default ViT-B-32:openai) or a transformers "
                             "id/path (default openai/clip-vit-base-patch32); 'tiny' = random tiny model")
    parser.add_argument("--top-k", type=int, default=10, help="initial images (= clips) per anomaly class")
    parser.add_argument("--normal-k", type=int, default=50, help="initial images for pseudo-normal clips")
    parser.add_argument("--lam", type=float, default=0.5, help="lambda of Eq. 4, weight of the negative score")
    parser.add_argument("--neg-aggregate", choices=["mean", "max"], default="mean",
                        help="how the negative similarities are aggregated")
    parser.add_argument("--frame-step", type=int, default=16, help="candidate every N-th frame")
    parser.add_argument("--frames-per-video", type=int, default=8,
                        help="at most K evenly spaced candidates per video (0: no limit)")
    parser.add_argument("--scene-alpha", type=float, default=None,
                        help="scene balancing before scoring: keep ~count(scene)^alpha frames (off by default)")
    parser.add_argument("--scene-quota", type=int, default=0,
                        help="scene balancing after scoring: frames reserved per scene and class (0: off)")
    parser.add_argument("--scene-regex", default=DEFAULT_SCENE_REGEX,
                        help="regex whose group 1 on the video file name is its scene (else: its folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scene sub-sampling")
    parser.add_argument("--batch-size", type=int, default=32, help="frames per CLIP forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    workers.add_shard_args(parser)
    parser.set_defaults(func=_main)


def _main(args) -> int:
    """Entry of `pavad-gen select`."""
    run_select(videos=args.videos, workdir=args.workdir, classes=args.classes,
               clip_backend=args.clip_backend, clip_model=args.clip_model, top_k=args.top_k,
               normal_k=args.normal_k, lam=args.lam, neg_aggregate=args.neg_aggregate,
               frame_step=args.frame_step, frames_per_video=args.frames_per_video,
               scene_alpha=args.scene_alpha, scene_quota=args.scene_quota,
               scene_regex=args.scene_regex, seed=args.seed, batch_size=args.batch_size,
               device=args.device, shard=workers.resolve_shard(args))
    return 0
