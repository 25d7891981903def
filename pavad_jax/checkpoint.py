"""Every on-disk layout of the JAX side, in one place.

Training checkpoints (`TrainCheckpoints`), under RUN/checkpoints/<step>/ (Orbax):
  state/      the engine's TrainState (params, model state, optimiser state, seeds, weights; a
              leading member axis), saved by all processes together
  progress/   JSON: the step, best results per member, evaluation history, wall time
  iterator/   the grain iterator's state when batches stream from grain, so a resumed run
              continues on the same batch

Model exports (`export_model` / `load_model`): what scoring needs, nothing else.
  config.json {"format": 1, "model": <model config>, "loss": <loss config>,
               "features": {"feature_extractor", "protocol"} of the training shards, when known}
  state/      an Orbax StandardCheckpointer tree: the Detector's nnx state as a pure dict
pavad-train writes RUN/best/ and RUN/last/, pavad-sweep SWEEP/members/<i>/{best,last}/,
pavad-import-urdmu one export. `resolve_model` turns any of these (or a run or sweep member
folder, or a run folder plus a step) into a loaded detector.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
# (orbax-checkpoint is pinned: these two are not in its public API)
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization.type_handler_registry import GLOBAL_TYPE_HANDLER_REGISTRY

from pavad_jax import atomic
from pavad_jax.config_base import default_loss_config, model_defaults, model_name
from pavad_jax.models import registry
from pavad_jax.models.detector import Detector

# On CPU Orbax splits the saving of each replicated array across its replicas, slicing it with an
# eager op that XLA compiles once per shape and process: ~90 compilations (2-5 s) at the first save
# of the tiny config on 8 CPU devices, for a model of a few MiB whose writing takes milliseconds.
# Each array is saved by its first replica instead (Orbax's default on GPUs).
GLOBAL_TYPE_HANDLER_REGISTRY.add(  # (override=True through register_type_handler logs a warning)
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False,
                                              array_metadata_store=array_metadata_store.Store()),
    override=True, ignore_warnings=True)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
STATE_DIR = "state"
CHECKPOINTS_DIR = "checkpoints"
RUN_CONFIG = "config.json"  # a pavad-train run's full config, beside checkpoints/
MEMBERS_DIR = "members"  # a sweep's per-member exports


# ---------------------------------------------------------------------------------------------
# Training checkpoints.

class TrainCheckpoints:
    """The Orbax checkpoints of one training run (or sweep group): state, progress, iterator."""

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.directory = (pathlib.Path(run_dir) / CHECKPOINTS_DIR).absolute()
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, progress: dict, iterator=None) -> None:
        """Saves on every process (Orbax synchronises them); returns when the files are final."""
        items = {"state": ocp.args.StandardSave(state), "progress": ocp.args.JsonSave(progress)}
        if iterator is not None:
            import grain  # pylint: disable=import-outside-toplevel

            items["iterator"] = grain.checkpoint.CheckpointSave(iterator)
        self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def restore(self, template: Any, iterator=None, step: int | None = None) -> tuple[Any, dict | None]:
        """(state, progress) of `step` (default the latest) shaped and sharded like `template`;
        (template, None) when there is no checkpoint. The iterator is restored in place."""
        step = self.latest_step() if step is None else step
        if step is None:
            return template, None
        items = {"state": ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, template)),
                 "progress": ocp.args.JsonRestore()}
        if iterator is not None:
            import grain  # pylint: disable=import-outside-toplevel

            items["iterator"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        return restored["state"], restored["progress"]

    def restore_fields(self, step: int, abstract: dict[str, Any]) -> dict[str, Any]:
        """Some fields of a saved TrainState, e.g. {"params": ShapeDtypeStructs (leading member
        axis)}, on the default device: what scoring needs, without the optimiser state."""
        if step not in self.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; saved steps: {self.all_steps()}")
        restored = self._manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=abstract, partial_restore=True)))
        return restored["state"]

    def close(self) -> None:
        self._manager.close()


# ---------------------------------------------------------------------------------------------
# Model exports.

def _split_config(config: Any) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(model, loss) configs from an experiment config (`.model`, `.loss`) or a bare model config."""
    if "feature_dim" in config:
        return ml_collections.ConfigDict(config), model_defaults(model_name(config)).loss
    if "model" not in config:
        raise ValueError("export_model needs a model config (with feature_dim) or a config with a `model` field")
    loss = config.loss if "loss" in config else default_loss_config()
    return ml_collections.ConfigDict(config.model), ml_collections.ConfigDict(loss)


def export_model(directory: str | os.PathLike, detector: Detector, config: Any, features: dict | None = None
                 ) -> pathlib.Path:
    """Write `detector` and its config to `directory` (replacing a previous export there).

    `features` records how the training features were made ({"feature_extractor", "protocol"}
    of the shards), so pavad-detect extracts a video's features the same way. In a multi-host
    run every process calls it (Orbax synchronises them; the primary writes).
    """
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    model_cfg, loss_cfg = _split_config(config)
    # numpy leaves: identical on every process, written once (Orbax refuses host-local jax.Arrays
    # in a multi-host run)
    state = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(detector)))
    with ocp.StandardCheckpointer() as checkpointer:  # orbax writes to a temp dir and renames
        checkpointer.save(directory / STATE_DIR, state, force=True)
        checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        atomic.write_json(directory / CONFIG_FILE, {
            "format": FORMAT_VERSION,
            "model": json.loads(model_cfg.to_json()),
            "loss": json.loads(loss_cfg.to_json()),
            **({"features": features} if features else {}),
        }, indent=2, sort_keys=True)
    return directory


def is_model_dir(directory: str | os.PathLike) -> bool:
    """Whether `directory` is a model export (config.json with a format and state/)."""
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file() or not (pathlib.Path(directory) / STATE_DIR).is_dir():
        return False
    try:
        return "format" in json.loads(path.read_text())
    except ValueError:
        return False


def read_config(directory: str | os.PathLike) -> ml_collections.ConfigDict:
    """The {model, loss} config of a model directory, with a clear error when it is not one."""
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory: {CONFIG_FILE} is missing "
                                "(write one with export_model or pavad-import-urdmu)")
    payload = json.loads(path.read_text())
    if payload.get("format") != FORMAT_VERSION or "model" not in payload:
        raise ValueError(f"{path}: unsupported model format {payload.get('format')!r} (expected {FORMAT_VERSION})")
    # Fields added since the export take their detector's defaults (exports without a name are UR-DMU).
    try:
        defaults = model_defaults(model_name(ml_collections.ConfigDict({"model": payload["model"]})))
    except ValueError as e:
        raise ValueError(f"{path}: field 'model.name': {e}") from None
    defaults.model.update(payload["model"])
    defaults.loss.update(payload.get("loss", {}))
    return defaults


def load_model(directory: str | os.PathLike) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """Rebuild the detector saved in `directory` (config.json's model.name picks the module);
    returns (detector, config with .model and .loss)."""
    directory = pathlib.Path(directory).absolute()
    config = read_config(directory)
    abstract = nnx.eval_shape(lambda: registry.build(config, seed=0, for_restore=True))
    graphdef, abstract_state = nnx.split(abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          nnx.to_pure_dict(abstract_state))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory / STATE_DIR, target)
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state), config


# ---------------------------------------------------------------------------------------------
# Any checkpoint a user may point at.

def read_run_config(run_dir: str | os.PathLike) -> ml_collections.ConfigDict | None:
    """The full config a pavad-train run (or sweep member) saved, or None when there is none."""
    path = pathlib.Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    return None if "format" in payload else ml_collections.ConfigDict(payload)


def model_dir_of(path: str | os.PathLike, which: str = "best") -> pathlib.Path:
    """The model export a user points at: an export as is; a run or sweep member folder's `which`
    (best or last). A one-line FileNotFoundError says what the folder lacks."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint folder")
    if is_model_dir(path):
        return path
    if is_model_dir(path / which):
        return path / which
    if read_run_config(path) is not None or (path / "last").is_dir():
        raise FileNotFoundError(f"{path / which} does not exist (no evaluation has run yet?); pass "
                                f"{path / 'last'} or a step number")
    raise FileNotFoundError(f"{path} is neither a model export (config.json + state/) nor a run folder "
                            "(config.json + best/ or last/)")


def resolve_model(path: str | os.PathLike, which: str = "best"
                  ) -> tuple[Detector, ml_collections.ConfigDict, ml_collections.ConfigDict | None, str]:
    """(detector, {model, loss} config, the run's full config or None, description) of any checkpoint.

    `path` is a model export (a run's best/ or last/, a sweep member's, an imported UR-DMU
    checkpoint), a pavad-train run folder or a sweep member folder (then `which` picks best,
    last or a step number saved in its checkpoints/).
    """
    path = pathlib.Path(path)
    if not str(which).isdigit() or is_model_dir(path):
        directory = model_dir_of(path, which)
        detector, config = load_model(directory)
        return detector, config, read_run_config(directory.parent), str(directory)
    run_config = read_run_config(path)
    if run_config is None:
        raise FileNotFoundError(f"{path}: a step number needs a pavad-train run folder (config.json + checkpoints/)")
    detector = registry.build(run_config, seed=0, for_restore=True)
    graphdef, params, rest = nnx.split(detector, nnx.Param, ...)
    stack = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype), tree)
    fields = {"params": stack(params)}
    if run_config.model.get("name", "urdmu") != "urdmu":  # BatchNorm statistics, prompt bank
        fields["rest"] = stack(rest)
    checkpoints = TrainCheckpoints(path)
    try:
        restored = checkpoints.restore_fields(int(which), fields)
    finally:
        checkpoints.close()
    params = jax.tree.map(lambda x: np.asarray(x)[0], restored["params"])
    if "rest" in restored:
        rest = jax.tree.map(lambda x: np.asarray(x)[0], restored["rest"])
    config = ml_collections.ConfigDict({"model": run_config.model, "loss": run_config.loss})
    return nnx.merge(graphdef, params, rest), config, run_config, f"{path} step {which}"
