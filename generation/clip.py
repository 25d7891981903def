"""CLIP image and text embeddings for every generation step (select, filter, features, Rai's D).

One preprocessing for every backend, on the torch device: uint8 RGB frames (grey ones
repeated to 3 channels) resized so the shorter side is the model's image size (bicubic,
antialiased), centre-cropped to a square, scaled to [0, 1] and normalised with the OpenAI
CLIP mean/std (what every released CLIP image processor does). Backends:

* ``transformers`` (default): ``CLIPVisionModelWithProjection`` / ``CLIPTextModelWithProjection``
  from a hub id or a local folder (each tower is loaded when first used), or ``tiny``: small
  random towers built from configs (32x32 input, 16-d embeddings; tests and CPU dry runs);
* ``open_clip``: ``"ARCH:PRETRAINED"`` as open_clip names them, e.g. PA-VAD's ``ViT-B-32:openai``
  (needs ``pip install .[openclip]``).

Embeddings are the projected ones (512-d for ViT-B/32, 768-d for ViT-L/14), float32 numpy,
unit-normalised when asked (``normalize=True``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from generation.models import fixed_seed, word_level_tokenizer

DEFAULT_MODEL = "openai/clip-vit-base-patch32"  # PA-VAD's CLIP (ViT-B/32)
DEFAULT_OPEN_CLIP = "ViT-B-32:openai"
TINY = "tiny"
BACKENDS = ("transformers", "open_clip")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=16)


class ClipEncoder:
    """CLIP image and text embeddings of one model (see the module docstring)."""

    def __init__(self, model: str | None = None, backend: str = "transformers", device: str = "cpu"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown CLIP backend {backend!r}: expected one of {BACKENDS}")
        if backend == "open_clip" and model == TINY:
            raise ValueError("--clip-model tiny exists for the transformers backend only "
                             "(use --clip-backend transformers)")
        self.model = model or (DEFAULT_OPEN_CLIP if backend == "open_clip" else DEFAULT_MODEL)
        self.backend, self.device = backend, torch.device(device)
        self.name = f"{backend}:{self.model}"  # part of cache keys and of the shard provenance
        self._vision = self._text = self._tokenize = None
        mean, std = CLIP_MEAN, CLIP_STD
        if backend == "open_clip":
            network = _load_open_clip(self.model, self.device)
            size = network.visual.image_size
            self._image_size, self._feature_dim = (size if isinstance(size, int) else size[0]), network.visual.output_dim
            mean, std = getattr(network.visual, "image_mean", None) or mean, getattr(network.visual, "image_std", None) or std
            self._vision, self._text = network.encode_image, network.encode_text
            tokenizer = _open_clip_tokenizer(self.model)
            self._tokenize = lambda texts: tokenizer(list(texts)).to(self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def _vision_tower(self):
        """The image tower (transformers: loaded on first use)."""
        if self._vision is None:
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            if self.model == TINY:
                with fixed_seed(0):
                    tower = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, **_TINY))
            else:
                tower = CLIPVisionModelWithProjection.from_pretrained(self.model)
            tower = tower.eval().requires_grad_(False).to(self.device)
            self._vision = lambda pixels: tower(pixel_values=pixels).image_embeds
            self._image_size, self._feature_dim = int(tower.config.image_size), int(tower.config.projection_dim)
        return self._vision

    def _text_tower(self):
        """The text tower and its tokenizer (transformers: loaded on first use)."""
        if self._text is None:
            tower, tokenizer = _transformers_text(self.model)
            tower = tower.eval().requires_grad_(False).to(self.device)
            length = tower.config.max_position_embeddings
            self._tokenize = lambda texts: tokenizer(list(texts), padding=True, truncation=True, max_length=length,
                                                     return_tensors="pt").to(self.device)
            self._text = lambda tokens: tower(input_ids=tokens["input_ids"],
                                              attention_mask=tokens["attention_mask"]).text_embeds
        return self._text

    @property
    def image_size(self) -> int:
        """Side of the square the image tower takes."""
        self._vision_tower()
        return self._image_size

    @property
    def feature_dim(self) -> int:
        """Dimension of the projected embeddings."""
        self._vision_tower()
        return self._feature_dim

    def pixels(self, frames) -> torch.Tensor:
        """(N, H, W, C) uint8 frames (numpy or torch, C = 1 or 3) -> (N, 3, S, S) normalised input."""
        images = frames if torch.is_tensor(frames) else torch.from_numpy(np.ascontiguousarray(frames))
        images = images.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        size, (height, width) = self.image_size, images.shape[-2:]
        if min(height, width) != size:
            scale = size / min(height, width)
            height, width = max(size, round(height * scale)), max(size, round(width * scale))
            images = F.interpolate(images, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        top, left = (height - size) // 2, (width - size) // 2
        images = images[..., top:top + size, left:left + size].clamp(0.0, 1.0)  # bicubic overshoots
        return (images - self.mean) / self.std

    @torch.inference_mode()
    def encode_images(self, frames, *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
        """(N, D) float32 embeddings of (N, H, W, C) uint8 RGB frames."""
        tower = self._vision_tower()
        out = [tower(self.pixels(frames[s:s + batch_size])).float() for s in range(0, len(frames), batch_size)]
        return _finish(torch.cat(out), normalize)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, normalize: bool = False) -> np.ndarray:
        """(N, D) float32 embeddings of N texts."""
        tower = self._text_tower()
        return _finish(tower(self._tokenize(texts)).float(), normalize)


def _finish(embeddings: torch.Tensor, normalize: bool) -> np.ndarray:
    """Optionally L2-normalised rows, as float32 numpy."""
    if normalize:
        embeddings = F.normalize(embeddings, dim=-1)
    return embeddings.cpu().numpy().astype(np.float32)


def _transformers_text(model: str):
    """(CLIPTextModelWithProjection, tokenizer) of a hub id / folder, or tiny ones built offline."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection

    if model != TINY:
        return CLIPTextModelWithProjection.from_pretrained(model), AutoTokenizer.from_pretrained(model)
    tokenizer = word_level_tokenizer(["<unk>", "<pad>", "<bos>", "<eos>"], bos="<bos>", eos="<eos>", pad_token="<pad>")
    config = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **_TINY)
    with fixed_seed(1):
        return CLIPTextModelWithProjection(config), tokenizer


def _load_open_clip(model: str, device: torch.device):
    """An open_clip model ("ARCH:PRETRAINED"), with a clear error when open_clip is missing."""
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(
            "the open_clip CLIP backend needs open_clip_torch (and torchvision): install it with "
            "`pip install .[openclip]` (with a torch build that has a matching torchvision), or "
            f"pick the transformers backend: --clip-backend transformers --clip-model {DEFAULT_MODEL}") from error
    arch, _, pretrained = model.partition(":")
    network = open_clip.create_model(arch, pretrained=pretrained or None)
    return network.eval().requires_grad_(False).to(device)


def _open_clip_tokenizer(model: str):
    """open_clip's tokenizer of an "ARCH:PRETRAINED" model."""
    import open_clip

    return open_clip.get_tokenizer(model.partition(":")[0])
