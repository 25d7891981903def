"""Spatial pseudo-anomalies: inpaint a masked region of each frame with a latent diffusion model.

Paper, section 3.2 (eq. 2): P_s(x) = F_s(stack(x, x * m, m); theta) with an off-the-shelf
LDM inpainting model, no fine-tuning. Here F_s is diffusers' StableDiffusionInpaintPipeline
(its UNet takes 9 channels: latents, mask, masked-image latents). The default model is the
public SD inpainting checkpoint; tests and the tiny config use `tiny_inpaint_pipeline`, a
randomly initialised pipeline built from configs without any download.
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
DEFAULT_PROMPT = ""  # unconditional fill: the paper states no prompt


def load_inpaint_pipeline(model: str = DEFAULT_INPAINT_MODEL, device: str = "cpu",
                          dtype: torch.dtype = torch.float32):
    """The inpainting pipeline from a hub id or local folder, safety checker off."""
    if model == "tiny":
        return tiny_inpaint_pipeline().to(device)
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        model, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def tiny_clip_tokenizer():
    """A CLIPTokenizer built offline: one token per byte symbol (with and without '</w>'), no merges."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [s + "</w>" for s in symbols]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def tiny_inpaint_pipeline(seed: int = 0):
    """A randomly initialised, very small SD inpainting pipeline (9-channel UNet), for tests."""
    from generation.models import fixed_seed

    with fixed_seed(seed):
        return _build_tiny_inpaint_pipeline()


def _build_tiny_inpaint_pipeline():
    """The components of tiny_inpaint_pipeline, built from the current torch RNG."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=9, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8)  # three blocks: latents are 1/4 of the frame side
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rgb(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 from grey (T, H, W, 1) or RGB frames."""
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


@torch.inference_mode()
def inpaint_frames(pipe, frames: np.ndarray, mask: np.ndarray, seed: int, steps: int = 25,
                   guidance_scale: float = 7.5, prompt: str = DEFAULT_PROMPT,
                   resolution: int | None = None) -> np.ndarray:
    """Inpaints mask (H, W) bool in every frame of (T, H, W, C) uint8; returns the same shape.

    Frames go through the pipeline as one batch (resized to resolution, a multiple of 8, when
    given, e.g. 512 for SD). Only the masked pixels are taken from the output: outside the
    mask the frames stay exactly the normal input, so the pseudo-anomaly is local.
    """
    t, height, width, channels = frames.shape
    if mask.shape != (height, width):
        raise ValueError(f"mask shape {mask.shape} does not match frames {frames.shape}")
    size = resolution or height
    if size % 8 or (resolution is None and width % 8):
        raise ValueError(f"inpainting needs sides divisible by 8, got {height}x{width} (set resolution)")
    out_w = size if resolution else width
    images = torch.from_numpy(_rgb(frames)).permute(0, 3, 1, 2).float() / 255.0
    masks = torch.from_numpy(mask.astype(np.float32))[None, None].expand(t, 1, height, width)
    if resolution:
        images = torch.nn.functional.interpolate(images, (size, size), mode="bilinear", align_corners=False)
        masks = torch.nn.functional.interpolate(masks, (size, size), mode="nearest")
    generator = torch.Generator("cpu").manual_seed(seed)
    result = pipe(prompt=[prompt] * t, image=images, mask_image=masks, height=size, width=out_w,
                  num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator,
                  output_type="np").images  # (T, size, out_w, 3) float in [0, 1]
    filled = torch.from_numpy(np.asarray(result)).permute(0, 3, 1, 2)
    if resolution:
        filled = torch.nn.functional.interpolate(filled, (height, width), mode="bilinear", align_corners=False)
    filled = (filled.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if channels == 1:
        filled = filled.mean(-1, keepdims=True).round().astype(np.uint8)
    return np.where(mask[None, :, :, None], filled, frames)
