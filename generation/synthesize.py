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
import hashlib
import json
import socket
import time
from pathlib import Path

from generation import workers
from generation.models import DEFAULT_WAN
from generation.video_io import fit_image, to_uint8_frames, write_mp4

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


def run_synthesize(*, workdir: str, plan: str | None = None, model: str = DEFAULT_WAN,
                   height: int = 480, width: int = 832, num_frames: int = 81, fps: int = 16,
                   steps: int = 25, guidance: tuple[float, float] = GUIDANCE["sht"],
                   negative_prompt: str = DEFAULT_NEGATIVE_PROMPT, seed: int = 0,
                   device: str = "cuda", dtype: str = "bfloat16", cpu_offload: bool = False,
                   vae_tiling: bool = False, max_sequence_length: int = 512,
                   shard: tuple[int, int] = (0, 1)) -> workers.RunSummary:
    """Synthesise this shard's clips into <workdir>/videos; return what was done."""
    workdir = Path(workdir)
    plan_path = Path(plan) if plan else workdir / "plan.jsonl"
    items = workers.items_for_shard(workers.read_jsonl(plan_path), *shard)
    check_prompts(items, plan_path)
    out_dir = workdir / "videos"
    settings = {"height": height, "width": width, "num_frames": num_frames, "fps": fps,
                "steps": steps, "guidance_scale": guidance[0], "guidance_scale_2": guidance[1],
                "negative_prompt": negative_prompt, "dtype": dtype,
                "max_sequence_length": max_sequence_length}

    def finished(item):
        meta_path = workers.metadata_path(out_dir, item["id"])
        if not (meta_path.exists() and (out_dir / f"{item['id']}.mp4").exists()):
            return False
        meta = json.loads(meta_path.read_text())
        return (meta["settings"], meta["prompt"], meta["model"]) == (settings, item["prompt"], model)

    pipe = None
    if not all(finished(item) for item in items):
        # Load before the item loop: a model that cannot load is an error, not N failed items.
        pipe = _load_pipeline(model, device=device, dtype=dtype, cpu_offload=cpu_offload,
                              vae_tiling=vae_tiling)

    def synthesize_item(item):
        started = time.time()
        frames, item_seed_value = synthesize_clip(pipe, item, plan_path, settings, seed)
        write_mp4(out_dir / f"{item['id']}.mp4", frames, fps=fps)
        workers.atomic_write_json(workers.metadata_path(out_dir, item["id"]), {
            "id": item["id"], "prompt": item["prompt"], "class": item["class"],
            "kind": item["kind"], "seed": item_seed_value, "model": model, "settings": settings,
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

    image = fit_image(Image.open(workers.plan_file_path(plan_path, item["image"])),
                      settings["width"], settings["height"])
    value = item_seed(base_seed, item["id"])
    output = pipe(
        image=image, prompt=item["prompt"], negative_prompt=settings["negative_prompt"],
        height=settings["height"], width=settings["width"], num_frames=settings["num_frames"],
        num_inference_steps=settings["steps"], guidance_scale=settings["guidance_scale"],
        guidance_scale_2=settings["guidance_scale_2"],
        generator=torch.Generator(device="cpu").manual_seed(value),
        max_sequence_length=settings["max_sequence_length"], output_type="np")
    return to_uint8_frames(output.frames[0]), value


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
    parser.add_argument("--plan", default=None, help="plan with prompts (default <workdir>/plan.jsonl)")
    parser.add_argument("--model", default=DEFAULT_WAN,
                        help="diffusers Wan I2V model id or local path; 'tiny' = random tiny pipeline")
    parser.add_argument("--height", type=int, default=480, help="frame height (multiple of 16)")
    parser.add_argument("--width", type=int, default=832, help="frame width (multiple of 16)")
    parser.add_argument("--num-frames", type=int, default=81, help="frames per clip (4k+1)")
    parser.add_argument("--fps", type=int, default=16, help="frame rate of the written MP4")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--dataset", choices=sorted(GUIDANCE), default="sht",
                        help="picks the paper's guidance pair: sht (3.5, 3.5), ucf (6.5, 4.5)")
    parser.add_argument("--guidance", type=float, nargs=2, default=None, metavar=("HIGH", "LOW"),
                        help="guidance_scale and guidance_scale_2 of the two experts (overrides --dataset)")
    parser.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT, help="negative prompt")
    parser.add_argument("--seed", type=int, default=0, help="base seed; each item's seed is hash(seed, id)")
    parser.add_argument("--device", default="cuda", help="torch device")
    parser.add_argument("--dtype", default="bfloat16", help="transformer/text-encoder dtype (the VAE stays float32)")
    parser.add_argument("--cpu-offload", action="store_true", help="enable_model_cpu_offload (less GPU memory)")
    parser.add_argument("--vae-tiling", action="store_true", help="decode the VAE in tiles (less memory)")
    parser.add_argument("--max-sequence-length", type=int, default=512, help="text tokens of the UMT5 encoder")
    workers.add_shard_args(parser)
    parser.set_defaults(func=_main)


def _main(args) -> int:
    """Entry of `pavad-gen synthesize`; exit status 1 if an item failed."""
    summary = run_synthesize(
        workdir=args.workdir, plan=args.plan, model=args.model, height=args.height,
        width=args.width, num_frames=args.num_frames, fps=args.fps, steps=args.steps,
        guidance=tuple(args.guidance) if args.guidance else GUIDANCE[args.dataset],
        negative_prompt=args.negative_prompt, seed=args.seed, device=args.device, dtype=args.dtype,
        cpu_offload=args.cpu_offload, vae_tiling=args.vae_tiling,
        max_sequence_length=args.max_sequence_length, shard=workers.resolve_shard(args))
    return 1 if summary.failed else 0
