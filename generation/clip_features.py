"""CLIP image embeddings of video frames, the alternative to I3D clip features.

transformers' ``CLIPVisionModelWithProjection``: each frame is resized (shorter side to the
model's image size, bicubic), centre-cropped to a square and normalised with the OpenAI CLIP
mean/std (the values every released CLIP image processor uses), then embedded; the projected
``image_embeds`` (512-d for ViT-B/32) are returned unnormalised. The paper uses CLIP ViT-B/32
for initial-image selection, so that is the default here too.

Preprocessing runs on the torch device on whole batches of frames; only the optional resize
of the decoded frames happens on the CPU (see generation/extract.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
TINY = "tiny"  # a small random CLIP vision tower built from a config (tests, CPU dry runs)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_clip_vision(seed: int = 0):
    """A randomly initialised CLIP vision tower (32x32 input, 16-d embeddings), same weights every call."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, projection_dim=16)
    with torch.random.fork_rng(devices=[]):  # fixed weights without touching the caller's RNG
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(config).eval()


def load_clip_vision(model: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu"):
    """CLIP vision tower + projection from a hub id, a local folder, or 'tiny'; eval mode on `device`."""
    if model == TINY:
        vision = tiny_clip_vision()
    else:
        from transformers import CLIPVisionModelWithProjection

        vision = CLIPVisionModelWithProjection.from_pretrained(model)
    return vision.eval().requires_grad_(False).to(device)


def centre_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, 3, H, W) float images so the shorter side is `size` (bicubic), then centre-crop size x size."""
    height, width = images.shape[-2:]
    if min(height, width) != size:
        scale = size / min(height, width)
        new = (max(size, round(height * scale)), max(size, round(width * scale)))
        images = F.interpolate(images, size=new, mode="bicubic", align_corners=False, antialias=True)
        height, width = new
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top:top + size, left:left + size]


class ClipFrameEncoder:
    """Embeds uint8 RGB frames with a CLIP vision tower, preprocessing on the device."""

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = load_clip_vision(model, self.device)
        self.image_size = int(self.model.config.image_size)
        self.feature_dim = int(self.model.config.projection_dim)
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 frames -> (N, 3, S, S) normalised CLIP input on the device."""
        images = frames.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        images = centre_square(images, self.image_size).clamp(0.0, 1.0)  # bicubic overshoots
        return (images - self._mean) / self._std

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings (N, D) float32 of already normalised (N, 3, S, S) pixels."""
        return self.model(pixel_values=pixel_values).image_embeds.float()

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D) float32 of (N, H, W, 3) uint8 RGB frames."""
        return self.embed_pixels(self.pixel_values(frames))
