"""Frame-level CLIP image embeddings for the discriminator D (paper, sections 3.5 and 4.1b).

The paper uses ViFi-CLIP (a ViT-B/16 CLIP fine-tuned on Kinetics-400, 512-d embeddings). Its
weights are not published in transformers format, so the default is the ViT-B/16 CLIP it starts
from; a converted ViFi-CLIP checkpoint in a local folder loads the same way. Tests build a tiny
random CLIP vision tower from a config.
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip(model: str = DEFAULT_CLIP_MODEL, device: str = "cpu"):
    """CLIP vision tower with its projection head, from a hub id, a local folder, or 'tiny'."""
    if model == "tiny":
        return tiny_clip().to(device)
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection.from_pretrained(model).eval().to(device)


def tiny_clip(seed: int = 0, projection_dim: int = 32):
    """A randomly initialised, very small CLIP vision tower (32x32 input), for tests."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, projection_dim=projection_dim)
    return CLIPVisionModelWithProjection(config).eval()


def preprocess(frames: np.ndarray, image_size: int) -> torch.Tensor:
    """(T, H, W, C) uint8 frames to CLIP's input: RGB, resized to image_size, normalised."""
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    images = torch.nn.functional.interpolate(images, (image_size, image_size), mode="bicubic",
                                             align_corners=False).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.inference_mode()
def frame_features(model, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """L2-normalised image embeddings (T, D) float32 of (T, H, W, C) uint8 frames."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(frames), batch_size):
        pixels = preprocess(frames[start:start + batch_size], model.config.image_size).to(device)
        embeds = model(pixel_values=pixels).image_embeds
        out.append(torch.nn.functional.normalize(embeds, dim=-1).float().cpu().numpy())
    return np.concatenate(out)
