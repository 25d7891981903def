"""`pavad-gen synthesize`: image-to-video synthesis of pseudo clips with Wan 2.2 (CA-PAG, Eq. 7).

Every plan item (initial image + refined prompt) becomes one clip made by diffusers'
``WanImageToVideoPipeline``. Defaults are the paper's (supp. S1.3): Wan 2.2 I2V A14B
("Wan-AI/Wan2.2-I2V-A14B-Diffusers"), 832x480, 81 frames, 16 fps, 25 steps; guidance
(3.5, 3.5) for ShanghaiTech and (6.5, 4.5) for UCF-Crime, the two numbers being
``guidance_scale`` (high-noise expert) and ``guidance_scale_2`` (low-noise expert).

Outputs, per item, in ``<workdir>/videos/``: ``<id>.mp4`` (H.264), then ``<id>.json``
(prompt, class, kind, seed, model, settings, source image): both written atomically, the
JSON last, so an item is finished exactly when its JSON exists with the same settings and
prompt. The seed of an item is derived from ``--seed`` and its id, so a clip does not depend
on which worker made it or in what order. A killed worker loses at most its current item;
rerunning the same command finishes the rest.

Memory (the A14B experts take ~96 GB on one GPU in bf16, S3): ``--cpu-offload``
(enable_model_cpu_offload), ``--vae-tiling``, ``--dtype bfloat16``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import socket
import time
from pathlib import Path

from generation import media, workers
from generation.models import DEFAULT_WAN
from generation.step_settings import add_flags, from_args, setting

GUIDANCE = {"sht": (3.5, 3.5), "ucf": (6.5, 4.5)}  # supp. S1.3
# Nuisances of surveillance-style generation; the paper does not list its negative prompt.
DEFAULT_NEGATIVE_PROMPT = (
    "camera motion, camera shake, panning, zooming, scene cut, blurry, low quality, distorted "
    "faces, deformed bodies, text, watermark, logo, subtitles, static frame, overexposed")


def item_seed(base_seed: int, item_id: str) -> int:
    """A 31-bit seed from the base seed and the item id (independent of worker and order)."""
    digest = hashlib.sha256(f"{base_seed}:{item_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def check_prompts(items: list[dict], plan_path: Path) -> None:
    """Raise if an item has no prompt (refine has not run), naming the plan and the item."""
    missing = [item["id"] for item in items if not item.get("prompt")]
    if missing:
        raise ValueError(f"{plan_path}: items {missing[:5]} have no 'prompt' field; run "
                         "`pavad-gen refine` (or `refine --no-refine`) on this plan first")


@dataclasses.dataclass
class SynthesizeSettings:
    """How every clip of a plan is made (defaults: the paper's, supp. S1.3)."""

    plan: str | None = setting(None, "plan with prompts; None: <workdir>/plan.jsonl")
    model: str = setting(DEFAULT_WAN, "diffusers Wan I2V model id or local path; 'tiny' = random tiny pipeline")
    height: int = setting(480, "frame height (multiple of 16)")
    width: int = setting(832, "frame width (multiple of 16)")
    num_frames: int = setting(81, "frames per clip (4k+1)")
    fps: int = setting(16, "frame rate of the written MP4")
    steps: int = setting(25, "sampling steps")
    guidance: tuple[float, float] = setting(GUIDANCE["sht"], "guidance_scale and guidance_scale_2 of the two "
                                            "experts: (3.5, 3.5) for ShanghaiTech, (6.5, 4.5) for UCF-Crime")
    negative_prompt: str = setting(DEFAULT_NEGATIVE_PROMPT, "negative prompt")
    seed: int = setting(0, "base seed; each item's seed is hash(seed, id)")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")
    dtype: str = setting("bfloat16", "transformer/text-encoder dtype (the VAE stays float32)")
    cpu_offload: bool = setting(False, "enable_model_cpu_offload (less GPU memory)")
    vae_tiling: bool = setting(False, "decode the VAE in tiles (less memory)")
    max_sequence_length: int = setting(512, "text tokens of the UMT5 encoder")


def run_synthesize(settings: SynthesizeSettings, *, workdir: str,
                   shard: tuple[int, int] = (0, 1)) -> workers.RunSummary:
    """Synthesise this shard's clips into <workdir>/videos; return what was done."""
    s = settings
    workdir = Path(workdir)
    plan_path = Path(s.plan) if s.plan else workdir / "plan.jsonl"
    items = workers.items_for_shard(workers.read_jsonl(plan_path), *shard)
    check_prompts(items, plan_path)
    out_dir = workdir / "videos"
    # What each clip's metadata records; a clip made with other settings is made again.
    recorded = {"height": s.height, "width": s.width, "num_frames": s.num_frames, "fps": s.fps,
                "steps": s.steps, "guidance_scale": s.guidance[0], "guidance_scale_2": s.guidance[1],
                "negative_prompt": s.negative_prompt, "dtype": s.dtype,
                "max_sequence_length": s.max_sequence_length}

    def finished(item):
        meta_path = workers.metadata_path(out_dir, item["id"])
        if not (meta_path.exists() and (out_dir / f"{item['id']}.mp4").exists()):
            return False
        meta = json.loads(meta_path.read_text())
        return (meta["settings"], meta["prompt"], meta["model"]) == (recorded, item["prompt"], s.model)

    pipe = None
    if not all(finished(item) for item in items):
        # Load before the item loop: a model that cannot load is an error, not N failed items.
        pipe = _load_pipeline(s.model, device=workers.resolve_device(s.device), dtype=s.dtype,
                              cpu_offload=s.cpu_offload, vae_tiling=s.vae_tiling)

    def synthesize_item(item):
        started = time.time()
        frames, item_seed_value = synthesize_clip(pipe, item, plan_path, recorded, s.seed)
        media.write_mp4(out_dir / f"{item['id']}.mp4", frames, fps=s.fps)
        workers.atomic_write_json(workers.metadata_path(out_dir, item["id"]), {
            "id": item["id"], "prompt": item["prompt"], "class": item["class"],
            "kind": item["kind"], "seed": item_seed_value, "model": s.model, "settings": recorded,
            "image": str(workers.plan_file_path(plan_path, item["image"]).resolve()),
            "source": {k: item.get(k) for k in ("video", "frame", "scene", "score")},
            "refined": item.get("refined"), "frames": int(frames.shape[0]),
            "seconds": round(time.time() - started, 2), "host": socket.gethostname()})

    index, count = shard
    summary = workers.run_items(items, synthesize_item, out_dir=out_dir, done=finished,
                                desc=f"synthesize (shard {index}/{count})")
    print(f"synthesize: {summary} -> {out_dir}")
    return summary


def synthesize_clip(pipe, item: dict, plan_path: Path, settings: dict, base_seed: int):
    """Run the pipeline on one item: ((T, H, W, 3) uint8 frames, the seed used)."""
    import torch
    from PIL import Image

    image = media.fit_image(Image.open(workers.plan_file_path(plan_path, item["image"])),
                      settings["width"], settings["height"])
    value = item_seed(base_seed, item["id"])
    output = pipe(
        image=image, prompt=item["prompt"], negative_prompt=settings["negative_prompt"],
        height=settings["height"], width=settings["width"], num_frames=settings["num_frames"],
        num_inference_steps=settings["steps"], guidance_scale=settings["guidance_scale"],
        guidance_scale_2=settings["guidance_scale_2"],
        generator=torch.Generator(device="cpu").manual_seed(value),
        max_sequence_length=settings["max_sequence_length"], output_type="np")
    return media.to_uint8_frames(output.frames[0]), value


def _load_pipeline(model: str, **options):
    """Load the Wan pipeline (kept apart so tests can count loads)."""
    from generation.models import load_wan_pipeline

    return load_wan_pipeline(model, **options)


def register(subparsers) -> None:
    """Add the `synthesize` subcommand."""
    parser = subparsers.add_parser(
        "synthesize", help="Wan 2.2 image-to-video synthesis of pseudo clips (Eq. 7)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="folder of select/refine (videos/ is written here)")
    parser.add_argument("--dataset", choices=sorted(GUIDANCE), default=None,
                        help="shorthand for the paper's --guidance: sht (3.5, 3.5), ucf (6.5, 4.5)")
    add_flags(parser, SynthesizeSettings)
    workers.add_shard_args(parser)
    parser.set_defaults(func=_main)


def settings_from_args(args) -> SynthesizeSettings:
    """SynthesizeSettings from parsed flags; --dataset gives the guidance pair unless --guidance does."""
    settings = from_args(SynthesizeSettings, args)
    if args.guidance is None and args.dataset:
        settings = dataclasses.replace(settings, guidance=GUIDANCE[args.dataset])
    return settings


def _main(args) -> int:
    """Entry of `pavad-gen synthesize`; exit status 1 if an item failed."""
    summary = run_synthesize(settings_from_args(args), workdir=args.workdir, shard=workers.resolve_shard(args))
    return 1 if summary.failed else 0
