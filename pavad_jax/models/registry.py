"""The detector registry: config.model.name -> module, loss and batch fields, in one place.

  urdmu   pavad_jax.models.detector.Detector (UR-DMU + DARM discriminator + GV-VAD lambda)
  rtfm    pavad_jax.models.rtfm.RTFM
  lap     pavad_jax.models.lap.LAP (needs per-segment `caption_embedding` and a prompt bank)
  tevad   LAP without the prompt bank and prompt losses (defaults_lap.tevad_config)

Every command that builds, trains, scores or loads a detector goes through `build`, `loss` and
`extra_fields`, so a new detector is added here and nowhere else. Each module has
`scores(features, segment_ids=..., crop_chunk=..., attention_block=..., **extra_fields)`.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx

from pavad_jax.config_base import MODEL_NAMES, model_name  # noqa: F401 (re-exported)

TEXT_FIELD = "caption_embedding"
PROMPT_BANK_FILE = "prompt_bank.npy"  # the generation side's bank, at the top of a dataset folder


def extra_fields(config: Any) -> tuple[str, ...]:
    """The per-segment batch fields beyond `features` the detector reads (training and scoring)."""
    return (TEXT_FIELD,) if model_name(config) in ("lap", "tevad") else ()


def prompt_bank_path(config: Any) -> pathlib.Path | None:
    """LAP's prompt-bank .npy: config.model.prompt_bank, a relative path read under config.data.dir."""
    path = str(config.model.get("prompt_bank", "") or "")
    if not path:
        return None
    path = pathlib.Path(path).expanduser()
    if not path.is_absolute() and "data" in config and config.data.dir:
        path = pathlib.Path(config.data.dir).expanduser() / path
    return path


def check_darm(config: Any) -> None:
    """DARM (L_DA, L_upd) needs UR-DMU's memory slots and pseudo-normal rows: a named error otherwise."""
    name = model_name(config)
    if name == "urdmu":
        return
    darm = config.loss.get("darm") if "loss" in config else None
    for field in ("domain_alignment", "usage_update"):
        if darm is not None and darm.get(field):
            raise ValueError(f"config.loss.darm.{field} is set, but model {name!r} has no memory slots and no "
                             "pseudo-normal stream (PA-VAD's DARM is wired for UR-DMU only); set it False")
    if "data" in config and int(config.data.batch.get("pseudo_normal", 0)):
        raise ValueError(f"config.data.batch.pseudo_normal = {config.data.batch.pseudo_normal}: model {name!r} "
                         "takes no pseudo-normal rows (they feed UR-DMU's domain alignment only); set it 0")


def build(config: Any, *, seed: int = 0, for_restore: bool = False) -> nnx.Module:
    """A freshly initialised detector of config.model.name; `for_restore`: LAP's prompt bank is a
    placeholder of the right shape (the checkpoint restores it), so no file is read."""
    name = model_name(config)
    if name == "urdmu":
        from pavad_jax.models.detector import build_detector

        return build_detector(config.model, config.loss if "loss" in config else None, seed=seed)
    if name == "rtfm":
        from pavad_jax.models import rtfm

        return rtfm.build(config, seed=seed)
    from pavad_jax.models import lap

    bank = None
    prompts = int(config.model.prompts)
    if prompts and for_restore:
        bank = np.zeros((prompts, int(config.model.text_dim)), np.float32)
    elif prompts:
        path = prompt_bank_path(config)
        if path is None or not path.is_file():
            raise ValueError(f"config.model.prompt_bank = {config.model.get('prompt_bank')!r}: LAP needs its prompt "
                             f"embeddings, a .npy of shape (model.prompts, model.text_dim) (pavad-gen gvvad writes "
                             f"DATASET/{PROMPT_BANK_FILE}; a relative path is read under config.data.dir)"
                             + (f"; {path} does not exist" if path is not None else ""))
        bank = np.load(path)
    return lap.build(config, prompt_bank=bank, seed=seed)


def loss(model: nnx.Module, batch: dict[str, jax.Array], weights: dict[str, jax.Array], key: jax.Array,
         config: Any, step: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total, terms) of the detector's training loss on a trainer batch; `step` feeds GV-VAD's
    lambda warm-up (RTFM, LAP). RTFM and LAP update their BatchNorm statistics in `model`."""
    name = model_name(config)
    if name == "urdmu":
        from pavad_jax.losses import compute_loss

        return compute_loss(model, batch, weights, key, config=config)
    check_darm(config)
    if name == "rtfm":
        from pavad_jax.models import rtfm

        return rtfm.loss(model, batch, key, config, weights=weights, step=step)
    from pavad_jax.models import lap

    missing = [f for f in extra_fields(config) if f not in batch]
    if missing:
        raise ValueError(f"model {name!r} reads batch field(s) {missing}: the training shards must carry them "
                         "(pavad-gen gvvad writes caption_embedding; manifest.json lists segment_fields)")
    return lap.loss(model, batch, key, config, weights=weights, step=step)
