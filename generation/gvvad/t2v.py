"""GV-VAD text-to-video: one MP4 per description, through a diffusers pipeline.

Backends: ``wan`` (WanPipeline, the default; Wan 2.2 T2V A14B) and ``cogvideox``
(CogVideoXPipeline; CogVideoX is the model the GV-VAD paper used). ``--model tiny`` builds a
randomly initialised pipeline of the chosen backend from configs (a few hundred thousand
parameters, no download), for tests and the ``gvvad_tiny`` config.

Each description ``<id>`` of the repository gives ``<out_dir>/<id>.mp4`` and then, last,
``<out_dir>/<id>.json`` (the description record plus what was generated and how: backend,
model, size, frames, fps, steps, guidance, seed, seconds). Both are written atomically, and
a description whose ``<id>.json`` exists is skipped, so a killed run resumes where it
stopped. Work is split across processes with ``--shard-index/--num-shards`` (or the Slurm /
Kubernetes environment; see generation/workers.py). The seed of a video depends only on the
base seed and its id, so a video does not change when the sharding does.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from generation import media, workers
from generation.models import fixed_seed
from generation.step_settings import add_flags, from_args, from_section, setting

TINY = "tiny"
DEFAULT_MODELS = {
    "wan": "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    "cogvideox": "THUDM/CogVideoX-5b",
}
# Wan's recommended negative prompt, in English (the official one is Chinese; either works).
WAN_NEGATIVE_PROMPT = (
    "bright colors, overexposed, static, blurred details, subtitles, style, artwork, painting, "
    "still picture, grey overall, worst quality, low quality, JPEG artifacts, ugly, deformed, "
    "extra fingers, poorly drawn hands, poorly drawn face, disfigured, fused fingers, "
    "motionless frame, cluttered background, three legs, walking backwards")


@dataclasses.dataclass(frozen=True)
class T2VSettings:
    """How every video of a run is generated (the defaults are Wan 2.2 T2V A14B's)."""

    backend: str = setting("wan", "wan (WanPipeline) or cogvideox (CogVideoXPipeline); unset fields take the "
                           "backend's defaults", choices=tuple(sorted(DEFAULT_MODELS)))
    model: str = setting(DEFAULT_MODELS["wan"], f"hub id or local folder; '{TINY}' = random test model")
    height: int = setting(480, "frame height (multiple of 16)")
    width: int = setting(832, "frame width (multiple of 16)")
    num_frames: int = setting(81, "frames per video (4k+1)")
    fps: int = setting(16, "frame rate written to the MP4")
    steps: int = setting(40, "denoising steps")
    guidance_scale: float = setting(4.0, "classifier-free guidance scale")
    negative_prompt: str = setting(WAN_NEGATIVE_PROMPT, "negative prompt ('' for none)")
    max_sequence_length: int = setting(512, "text tokens fed to the encoder")
    seed: int = setting(0, "base seed (each video: crc32(id) mixed with it)")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")
    dtype: str = setting("bfloat16", "weights dtype of real models")
    offload: bool = setting(False, "model CPU offload: Wan 2.2 A14B (2 x 14B + UMT5-XXL) on < 80 GB GPUs")

    def check(self) -> None:
        """Raise on settings the pipelines would reject late or silently change."""
        if self.backend not in DEFAULT_MODELS:
            raise ValueError(f"t2v: field 'backend' is {self.backend!r}, expected one of {sorted(DEFAULT_MODELS)}")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"t2v: fields 'height'/'width' ({self.height}x{self.width}) must be multiples of 16")
        if (self.num_frames - 1) % 4:
            raise ValueError(f"t2v: field 'num_frames' is {self.num_frames}; both backends need 4k+1 frames")
        if self.steps < 1 or self.fps < 1:
            raise ValueError(f"t2v: fields 'steps' and 'fps' must be >= 1 (got {self.steps}, {self.fps})")


# --------------------------------------------------------------------------- pipelines

def _tiny_text_stack(encoder_cls, config_cls):
    """A word-level tokenizer over the shipped element vocabulary and a 2-layer T5-type encoder."""
    from generation.gvvad.describe import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    encoder = encoder_cls(config_cls(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id)).eval()
    return tokenizer, encoder


def tiny_wan_pipeline(seed: int = 0):
    """A randomly initialised WanPipeline built from configs (no download); same seed, same weights."""
    with fixed_seed(seed):
        return _build_tiny_wan()


def _build_tiny_wan():
    """The components of tiny_wan_pipeline, built from the current torch RNG."""
    from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline,
                           WanTransformer3DModel)
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer, text_encoder = _tiny_text_stack(UMT5EncoderModel, UMT5Config)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                       vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))


def tiny_cogvideox_pipeline(seed: int = 0, max_text_seq_length: int = 32):
    """A randomly initialised CogVideoXPipeline built from configs (no download).

    CogVideoX's positional embedding is sized for a fixed text length, so the pipeline must
    be called with max_sequence_length == max_text_seq_length.
    """
    with fixed_seed(seed):
        return _build_tiny_cogvideox(max_text_seq_length)


def _build_tiny_cogvideox(max_text_seq_length: int):
    """The components of tiny_cogvideox_pipeline, built from the current torch RNG."""
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    tokenizer, text_encoder = _tiny_text_stack(T5EncoderModel, T5Config)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4,
        time_embed_dim=2, text_embed_dim=32, num_layers=1, sample_width=8, sample_height=8,
        sample_frames=9, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=max_text_seq_length)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
        latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                             transformer=transformer, scheduler=CogVideoXDDIMScheduler())


def load_pipeline(settings: T2VSettings):
    """The diffusers pipeline of `settings`: tiny from configs, else from a hub id or folder."""
    import torch

    device = workers.resolve_device(settings.device)
    if settings.model == TINY:
        if settings.backend == "wan":
            return tiny_wan_pipeline(settings.seed).to(device)
        return tiny_cogvideox_pipeline(settings.seed, settings.max_sequence_length).to(device)
    from diffusers import CogVideoXPipeline, WanPipeline

    pipeline_cls = WanPipeline if settings.backend == "wan" else CogVideoXPipeline
    dtype = getattr(torch, settings.dtype)
    if settings.backend == "wan":
        from diffusers import AutoencoderKLWan

        # Wan's VAE decodes noticeably better in float32 (diffusers' recommendation).
        vae = AutoencoderKLWan.from_pretrained(settings.model, subfolder="vae", torch_dtype=torch.float32)
        pipe = pipeline_cls.from_pretrained(settings.model, vae=vae, torch_dtype=dtype)
    else:
        pipe = pipeline_cls.from_pretrained(settings.model, torch_dtype=dtype)
        pipe.vae.enable_tiling()  # CogVideoX's VAE needs tiling to decode 49 frames in < 40 GB
    if settings.offload:
        pipe.enable_model_cpu_offload(device=device)  # each component on the GPU only while it runs
        return pipe
    return pipe.to(device)


def video_seed(base_seed: int, video_id: str) -> int:
    """The seed of one video: a function of the base seed and the id only (stable under sharding)."""
    return (zlib.crc32(video_id.encode("utf-8")) + 1_000_003 * base_seed) % (2**31)


def generate_video(pipe, text: str, settings: T2VSettings, seed: int) -> np.ndarray:
    """Generate one video for `text`: uint8 frames (num_frames, height, width, 3)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    output = pipe(
        prompt=text, negative_prompt=settings.negative_prompt, height=settings.height,
        width=settings.width, num_frames=settings.num_frames, num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale, generator=generator, output_type="np",
        max_sequence_length=settings.max_sequence_length)
    return media.to_uint8_frames(output.frames[0])


# --------------------------------------------------------------------------- one item

def generate_one(pipe, item: Mapping[str, Any], settings: T2VSettings, out_dir: Path) -> dict:
    """Generate, write `<id>.mp4`, then `<id>.json` (last: it marks the item done)."""
    if not str(item.get("text", "")).strip():
        raise ValueError(f"description {item.get('id')!r}: field 'text' is empty")
    seed = video_seed(settings.seed, item["id"])
    start = time.perf_counter()
    frames = generate_video(pipe, item["text"], settings, seed)
    media.write_mp4(out_dir / f"{item['id']}.mp4", frames, fps=settings.fps)
    meta = dict(item)
    meta.update(
        video=f"{item['id']}.mp4", num_frames=int(frames.shape[0]), height=int(frames.shape[1]),
        width=int(frames.shape[2]), fps=settings.fps, seed=seed, backend=settings.backend,
        model=settings.model, steps=settings.steps, guidance_scale=settings.guidance_scale,
        seconds=round(time.perf_counter() - start, 3))
    workers.atomic_write_json(workers.metadata_path(out_dir, item["id"]), meta)
    return meta


def run_t2v(settings: T2VSettings | None = None, *, descriptions: str, out_dir: str, shard_index: int = 0,
            num_shards: int = 1) -> workers.RunSummary:
    """Generate the videos of this shard's descriptions into `out_dir`; finished ones are skipped."""
    settings = settings or T2VSettings()
    settings.check()
    items = workers.read_jsonl(descriptions)
    workers.check_item_ids(items, source=str(descriptions))
    mine = workers.items_for_shard(items, shard_index, num_shards)
    out_dir = Path(out_dir)
    todo = [item for item in mine if not workers.metadata_path(out_dir, item["id"]).exists()]
    pipe = load_pipeline(settings) if todo else None  # a finished shard loads no model
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)  # one bar over videos, not one per video
    summary = workers.run_items(mine, lambda item: generate_one(pipe, item, settings, out_dir),
                                out_dir=out_dir, desc=f"gvvad t2v {shard_index}/{num_shards}")
    print(f"gvvad t2v: {summary} -> {out_dir}")
    return summary


# CogVideoX-5b's published settings: 720x480, 49 frames at 8 fps, 50 steps, guidance 6.
COGVIDEOX_DEFAULTS = T2VSettings(
    backend="cogvideox", model=DEFAULT_MODELS["cogvideox"], height=480, width=720, num_frames=49,
    fps=8, steps=50, guidance_scale=6.0, negative_prompt="", max_sequence_length=226)


def backend_defaults(backend: str | None) -> T2VSettings:
    """The published settings of a backend, which unset flags and config fields keep."""
    return COGVIDEOX_DEFAULTS if backend == "cogvideox" else T2VSettings()


def settings_from_args(args: argparse.Namespace) -> T2VSettings:
    """T2VSettings from parsed flags (the backend's defaults where a flag is not given)."""
    return from_args(T2VSettings, args, base=backend_defaults(args.backend))


def settings_from_section(section) -> T2VSettings:
    """T2VSettings from a config section (the backend's defaults where a field is not set)."""
    return from_section(T2VSettings, section, "t2v", base=backend_defaults(section.get("backend")))


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `gvvad-t2v` subcommand."""
    parser = subparsers.add_parser(
        "gvvad-t2v", help="GV-VAD: text-to-video (Wan or CogVideoX) for every description",
        description=__doc__.split("\n\n")[0] + " Unset flags take the backend's defaults.")
    parser.add_argument("--descriptions", required=True, help="descriptions.jsonl from gvvad-describe")
    parser.add_argument("--out-dir", required=True, help="folder for <id>.mp4 and <id>.json")
    add_flags(parser, T2VSettings)
    workers.add_shard_args(parser)

    def main(args) -> int:
        index, count = workers.resolve_shard(args)
        summary = run_t2v(descriptions=args.descriptions, out_dir=args.out_dir,
                          settings=settings_from_args(args), shard_index=index, num_shards=count)
        return int(bool(summary.failed))

    parser.set_defaults(func=main)
    return parser
