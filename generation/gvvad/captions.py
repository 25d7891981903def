"""Per-segment captions and their CLIP text embeddings: what LAP and TEVAD read beside the features.

LAP (and TEVAD) pair every 16-frame segment's visual features with the embedding of a caption of
that segment. Here an image-text-to-text model (any AutoModelForImageTextToText; the VLM of
`pavad-gen refine`, or `tiny` random weights in tests) captions the middle frame of each
segment, and CLIP's text encoder (`generation/clip.py`) embeds the captions: a (T, E) array per
video, stored in its shard record as the per-segment field ``caption_embedding`` (the manifest
lists it under ``segment_fields``). The anomaly event prompts of LAP's prompt bank are embedded
by the same text encoder into ``<dataset>/prompt_bank.npy`` (prompts, E), which
configs/gvvad_lap_ucf.py reads (model.prompt_bank, model.prompts = its rows).

GV-VAD's code reads a 26-prompt bank (UCF_abnormal_text_word.npy) whose texts it does not
publish; DEFAULT_PROMPTS are this project's: two phrasings of each of UCF-Crime's 13 classes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from generation.step_settings import setting

CAPTIONS_FILE = "{id}.captions.npz"  # per video, in the features cache: texts and embeddings
PROMPT_BANK_FILE = "prompt_bank.npy"  # = pavad_jax.models.registry.PROMPT_BANK_FILE
DEFAULT_PROMPTS = tuple(p for cls, verb in (
    ("abuse", "a person abusing another person"), ("arrest", "police arresting a person"),
    ("arson", "a person setting a fire"), ("assault", "a person attacking another person"),
    ("burglary", "a person breaking into a building"), ("explosion", "an explosion"),
    ("fighting", "people fighting"), ("road accident", "a car crashing"),
    ("robbery", "a person robbing another person"), ("shooting", "a person shooting a gun"),
    ("shoplifting", "a person stealing from a shop"), ("stealing", "a person stealing a vehicle"),
    ("vandalism", "a person damaging property")) for p in (cls, verb))


@dataclasses.dataclass
class CaptionSettings:
    """Whether and how the segments are captioned (section `captions` of a gvvad config)."""

    enabled: bool = setting(False, "caption every segment and store caption_embedding in the shards (LAP, TEVAD)")
    vlm_model: str = setting("Qwen/Qwen2.5-VL-7B-Instruct", "image-text-to-text model id, folder, or 'tiny'")
    clip_model: str = setting("openai/clip-vit-large-patch14", "CLIP text encoder of the captions and prompts "
                              "(GV-VAD: CLIP-L, E = 768) or 'tiny'")
    instruction: str = setting("Describe what happens in this frame in one sentence.", "the VLM's instruction")
    max_new_tokens: int = setting(32, "caption length limit (tokens)")
    prompts: tuple[str, ...] = setting(DEFAULT_PROMPTS, "anomaly event prompts of LAP's prompt bank")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")
    dtype: str = setting("auto", "VLM weights dtype: auto, bfloat16, float16, float32")


def segment_frame_indices(num_frames: int, segments: int, length: int = 16) -> list[int]:
    """The middle frame of each `length`-frame segment (the last one may be shorter)."""
    return [min(s * length + length // 2, num_frames - 1) for s in range(segments)]


class Captioner:
    """The VLM and the CLIP text encoder, loaded once: captions (T,) texts and embeddings (T, E)."""

    def __init__(self, settings: CaptionSettings, device: str):
        from generation.clip import ClipEncoder
        from generation.models import load_vlm

        self.settings = settings
        self.processor, self.vlm = load_vlm(settings.vlm_model, device=device, dtype=settings.dtype)
        self.text = ClipEncoder(settings.clip_model, device=device)

    def caption_video(self, path: str | Path, num_frames: int, segments: int) -> tuple[list[str], np.ndarray]:
        """(captions, (segments, E) float32 embeddings) of a video's segments."""
        from PIL import Image

        from generation import media
        from generation.refine import vlm_answer

        frames = media.read_frames(path, segment_frame_indices(num_frames, segments))
        texts = [vlm_answer(self.processor, self.vlm, Image.fromarray(frame), self.settings.instruction,
                            self.settings.max_new_tokens).strip() or "nothing" for frame in frames]
        return texts, self.text.encode_texts(texts)

    def prompt_bank(self) -> np.ndarray:
        """(prompts, E) float32 embeddings of the anomaly event prompts."""
        return self.text.encode_texts(list(self.settings.prompts))


def caption_path(cache_dir: Path, video_id: str) -> Path:
    return Path(cache_dir) / CAPTIONS_FILE.format(id=video_id)


def save_captions(path: Path, texts: Sequence[str], embeddings: np.ndarray) -> None:
    """Cache a video's captions and their embeddings (written whole or not at all)."""
    from generation import workers

    with workers.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, texts=np.asarray(texts, dtype=str), embeddings=np.asarray(embeddings, np.float32))


def load_caption_embeddings(path: Path, segments: int) -> np.ndarray:
    """The cached (segments, E) caption embeddings of a video, checked against its features' T."""
    with np.load(path) as cached:
        embeddings = cached["embeddings"]
    if embeddings.shape[0] != segments:
        raise ValueError(f"{path}: {embeddings.shape[0]} caption embeddings, but the video has {segments} segments")
    return embeddings
