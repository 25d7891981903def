"""The on-disk model format shared by pavad-import-urdmu, pavad-train, pavad-eval and pavad-score.

A model directory holds:
  config.json   {"format": 1, "model": <model config>, "loss": <loss config>} (ml_collections as JSON)
  state/        an orbax StandardCheckpointer tree: the Detector's nnx state as a pure dict
                (parameters and the memory slot masks)
The model is rebuilt from config.json, then its state is restored into it. Training state
(optimiser, data iterator) lives elsewhere: this directory is only what scoring needs.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from pavad_jax import atomic
from pavad_jax.models.detector import Detector, build_detector, default_loss_config, default_model_config

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
STATE_DIR = "state"


def _split_config(config: Any) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(model, loss) configs from an experiment config (`.model`, `.loss`) or a bare model config."""
    if "feature_dim" in config:
        return ml_collections.ConfigDict(config), default_loss_config()
    if "model" not in config:
        raise ValueError("export_model needs a model config (with feature_dim) or a config with a `model` field")
    loss = config.loss if "loss" in config else default_loss_config()
    return ml_collections.ConfigDict(config.model), ml_collections.ConfigDict(loss)


def export_model(directory: str | os.PathLike, detector: Detector, config: Any) -> pathlib.Path:
    """Write `detector` and its config to `directory` (replacing a previous export there)."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg, loss_cfg = _split_config(config)
    state = nnx.to_pure_dict(nnx.state(detector))
    with ocp.StandardCheckpointer() as checkpointer:  # orbax writes to a temp dir and renames
        checkpointer.save(directory / STATE_DIR, state, force=True)
        checkpointer.wait_until_finished()
    atomic.write_json(directory / CONFIG_FILE, {
        "format": FORMAT_VERSION,
        "model": json.loads(model_cfg.to_json()),
        "loss": json.loads(loss_cfg.to_json()),
    }, indent=2, sort_keys=True)
    return directory


def read_config(directory: str | os.PathLike) -> ml_collections.ConfigDict:
    """The {model, loss} config of a model directory, with a clear error when it is not one."""
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory: {CONFIG_FILE} is missing "
                                "(write one with export_model or pavad-import-urdmu)")
    payload = json.loads(path.read_text())
    if payload.get("format") != FORMAT_VERSION or "model" not in payload:
        raise ValueError(f"{path}: unsupported model format {payload.get('format')!r} (expected {FORMAT_VERSION})")
    # Fields added since the export take their defaults.
    model = default_model_config()
    model.update(payload["model"])
    loss = default_loss_config()
    loss.update(payload.get("loss", {}))
    return ml_collections.ConfigDict({"model": model, "loss": loss})


def load_model(directory: str | os.PathLike) -> tuple[Detector, ml_collections.ConfigDict]:
    """Rebuild the Detector saved in `directory`; returns (detector, config with .model and .loss)."""
    directory = pathlib.Path(directory).absolute()
    config = read_config(directory)
    abstract = nnx.eval_shape(lambda: build_detector(config.model, config.loss, seed=0))
    graphdef, abstract_state = nnx.split(abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          nnx.to_pure_dict(abstract_state))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory / STATE_DIR, target)
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state), config
