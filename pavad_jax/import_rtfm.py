"""Import RTFM's released PyTorch checkpoints (and GV-VAD's LAP/TEVAD state_dicts) into the NNX models.

An RTFM checkpoint is the state_dict of tianyu0207/RTFM's `Model` saved with torch.save
(`rtfm*-i3d.pkl`): `Aggregate.*` (the MTN), `fc1`-`fc3`. GV-VAD's LAP/TEVAD models add
`Aggregate_text.*` (the caption branch) and, with --Learnable_VLR, `VLR`. Conv1d and Linear
weights are transposed to channels-last; BatchNorm running averages become nnx.BatchStat;
`num_batches_tracked` carries nothing (the momentum is fixed). Sizes are read from the shapes.
torch is imported only inside import_urdmu.read_torch_checkpoint (the CLI).

  python -m pavad_jax.import_rtfm rtfm-ucf.pkl --output models/rtfm_ucf
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pavad_jax.import_urdmu import _conv1d, _linear, _same, read_torch_checkpoint, unwrap_state_dict
from pavad_jax.models import lap, rtfm
from pavad_jax.models.defaults_lap import lap_config, tevad_config
from pavad_jax.models.defaults_rtfm import rtfm_config

Conversion = Callable[[np.ndarray], np.ndarray]
_BATCH_NORM = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _mtn_keys(prefix: str, path: tuple) -> dict[str, tuple[tuple, Conversion]]:
    """The state_dict keys of one `Aggregate` (MTN) under `prefix` -> (path in the NNX state, conversion)."""
    mapping = {}
    for i in (1, 2, 3):
        mapping[f"{prefix}.conv_{i}.0.weight"] = ((*path, f"conv_{i}", "kernel"), _conv1d)
        mapping[f"{prefix}.conv_{i}.0.bias"] = ((*path, f"conv_{i}", "bias"), _same)
    mapping[f"{prefix}.conv_4.0.weight"] = ((*path, "conv_4", "kernel"), _conv1d)
    mapping[f"{prefix}.conv_5.0.weight"] = ((*path, "conv_5", "kernel"), _conv1d)
    norms = {f"conv_{i}.2": (*path, f"bn_{i}") for i in (1, 2, 3)}
    norms.update({"conv_5.2": (*path, "bn_5"), "non_local.W.1": (*path, "non_local", "w_norm")})
    for torch_name, our_path in norms.items():
        for field, ours in _BATCH_NORM.items():
            mapping[f"{prefix}.{torch_name}.{field}"] = ((*our_path, ours), _same)
    for torch_name, ours in (("g", "g"), ("theta", "theta"), ("phi", "phi"), ("W.0", "w")):
        mapping[f"{prefix}.non_local.{torch_name}.weight"] = ((*path, "non_local", ours, "kernel"), _conv1d)
        mapping[f"{prefix}.non_local.{torch_name}.bias"] = ((*path, "non_local", ours, "bias"), _same)
    return mapping


def key_map(text_branch: bool = False, learnable_lambda: bool = False) -> dict[str, tuple[tuple, Conversion]]:
    """Every state_dict key of RTFM (or, with text_branch, of GV-VAD's LAP) -> (NNX path, conversion)."""
    mapping = _mtn_keys("Aggregate", ("mtn",))
    if text_branch:
        mapping.update(_mtn_keys("Aggregate_text", ("text_mtn",)))
    for name in ("fc1", "fc2", "fc3"):
        mapping[f"{name}.weight"] = (("head", name, "kernel"), _linear)
        mapping[f"{name}.bias"] = (("head", name, "bias"), _same)
    if learnable_lambda:
        mapping["VLR"] = (("gv_lambda",), _same)
    return mapping


def _ignored(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _check_keys(arrays: dict, mapping: dict, source: str, what: str) -> None:
    present = {key for key in arrays if not _ignored(key)}
    unknown, missing = sorted(present - set(mapping)), sorted(set(mapping) - present)
    if unknown or missing:
        raise ValueError(f"{source}: state_dict does not match {what}: unknown keys {unknown}, missing keys {missing}")


def _build_from(build, arrays: dict, mapping: dict, source: str, extra: dict | None = None) -> nnx.Module:
    """The model `build()` makes, every variable taken from `arrays` (through `mapping`) or `extra`.

    The model is built abstractly (no random initialisation); a variable left without a value
    is an error, so the state_dict must cover the model entirely.
    """
    model = nnx.eval_shape(build)
    state = nnx.state(model)
    flat = dict(nnx.to_flat_state(state))
    values = {path: convert(np.asarray(arrays[key], dtype=np.float32)) for key, (path, convert) in mapping.items()}
    values.update(extra or {})
    uncovered = sorted(".".join(map(str, path)) for path in set(flat) - set(values))
    if uncovered:
        raise ValueError(f"{source}: the state_dict leaves model variables without values: {uncovered}")
    for key, (path, _) in mapping.items():
        if values[path].shape != flat[path].get_value().shape:
            raise ValueError(f"{source}: {key!r} has shape {np.shape(arrays[key])}, which does not fit the model "
                             f"(expected {flat[path].get_value().shape} after conversion)")
    for path, value in values.items():
        flat[path].set_value(jnp.asarray(value, jnp.float32))
    nnx.update(model, state)
    return model


def _require(arrays: dict, key: str, source: str, what: str) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"{source}: missing key {key!r}; is this {what} state_dict?")
    return np.asarray(arrays[key])


def rtfm_from_state_dict(arrays: dict, *, source: str = "checkpoint") -> tuple[rtfm.RTFM, ml_collections.ConfigDict]:
    """An RTFM holding the weights and BatchNorm statistics of an official RTFM state_dict.

    GV-VAD's RTFM runs (model_TEVAD.py with --feature-group vis) also save a caption branch
    that their forward never uses: its `Aggregate_text.*` keys are skipped.
    """
    arrays = {key: value for key, value in unwrap_state_dict(arrays, source).items()
              if not key.startswith("Aggregate_text.")}
    config = rtfm_config()
    config.model.feature_dim = int(_require(arrays, "Aggregate.conv_1.0.weight", source, "an RTFM").shape[1])
    config.model.head_hidden = (int(_require(arrays, "fc1.weight", source, "an RTFM").shape[0]),
                                int(_require(arrays, "fc2.weight", source, "an RTFM").shape[0]))
    mapping = key_map()
    _check_keys(arrays, mapping, source, "RTFM's Model")
    return _build_from(lambda: rtfm.build(config), arrays, mapping, source), config


def lap_from_state_dict(arrays: dict, prompt_bank: np.ndarray | None, *, source: str = "checkpoint"
                        ) -> tuple[lap.LAP, ml_collections.ConfigDict]:
    """A LAP (concat fusion, caption branch aggregated) from a GV-VAD model_tcc_triplet_v2_oral state_dict.

    The prompt bank is not in the state_dict (the code loads it from a .npy): pass it; None
    gives TEVAD (model_TEVAD.py, the same network without the prompt losses).
    """
    arrays = unwrap_state_dict(arrays, source)
    config = lap_config() if prompt_bank is not None else tevad_config()
    config.model.feature_dim = int(_require(arrays, "Aggregate.conv_1.0.weight", source, "a LAP").shape[1])
    config.model.text_dim = int(_require(arrays, "Aggregate_text.conv_1.0.weight", source, "a LAP").shape[1])
    config.model.head_hidden = (int(_require(arrays, "fc1.weight", source, "a LAP").shape[0]),
                                int(_require(arrays, "fc2.weight", source, "a LAP").shape[0]))
    config.loss.gv.learnable = "VLR" in arrays
    if config.loss.gv.learnable:
        config.loss.gv.mode = "official"
        config.loss.weights.gv_lambda = float(np.asarray(arrays["VLR"]))
    mapping = key_map(text_branch=True, learnable_lambda=config.loss.gv.learnable)
    _check_keys(arrays, mapping, source, "GV-VAD's LAP Model (feature_group both, concat)")
    extra, bank = {}, None
    if prompt_bank is not None:
        bank = np.asarray(prompt_bank, np.float32)
        config.model.prompts = bank.shape[0]
        extra[("prompt_bank",)] = bank
    model = _build_from(lambda: lap.build(config, prompt_bank=bank), arrays, mapping, source, extra)
    return model, config


def to_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The official state_dict (numpy, torch layouts) of an RTFM or LAP; num_batches_tracked as 0."""
    flat = {path: variable.get_value() for path, variable in nnx.to_flat_state(nnx.state(model))}
    mapping = key_map(text_branch=isinstance(model, lap.LAP), learnable_lambda=model.gv_lambda is not None)
    # Every conversion (a transpose or the identity) is its own inverse.
    out = {key: convert(np.asarray(flat[path])) for key, (path, convert) in mapping.items()}
    for key in list(out):
        if key.endswith(".running_var"):
            out[key.removesuffix("running_var") + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pavad-import-rtfm",
        description="Convert an RTFM PyTorch checkpoint (the state_dict of tianyu0207/RTFM's Model saved with "
        "torch.save, such as the released ShanghaiTech and UCF-Crime models) into a model directory. "
        "Feature dimension and head widths are read from the weights.")
    parser.add_argument("checkpoint", help="the .pkl / .pth file written by torch.save")
    parser.add_argument("--output", required=True, help="model directory to write (config.json + state/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pavad_jax.checkpoint import export_model  # pylint: disable=import-outside-toplevel

    arrays = read_torch_checkpoint(args.checkpoint)
    try:
        model, config = rtfm_from_state_dict(arrays, source=args.checkpoint)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    out = export_model(args.output, model, config)
    print(f"imported {args.checkpoint}: D={config.model.feature_dim}, head={tuple(config.model.head_hidden)}, "
          f"{len(arrays)} tensors -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
