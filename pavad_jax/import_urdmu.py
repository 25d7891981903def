"""pavad-import-urdmu: convert a UR-DMU PyTorch checkpoint into a pavad_jax model directory.

The checkpoint is a state_dict of the reference's `WSAD` saved with torch.save (.pkl or
.pth), possibly wrapped in {'state_dict': ...} and/or with 'module.' prefixes (DataParallel).
Linear and Conv1d weights are transposed to Flax's layouts. Slot counts, feature dimension and
depth are read from the shapes. torch is imported only inside `read_torch_checkpoint`.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

import ml_collections
import numpy as np
from flax import nnx

from pavad_jax.models.detector import Detector, build_detector, default_loss_config, default_model_config


def _linear(w: np.ndarray) -> np.ndarray:
    """torch Linear (out, in) -> flax (in, out)."""
    return w.T


def _conv1d(w: np.ndarray) -> np.ndarray:
    """torch Conv1d (out, in, k) -> flax (k, in, out)."""
    return w.transpose(2, 1, 0)


def _same(w: np.ndarray) -> np.ndarray:
    """Biases, LayerNorm scales and memory banks keep their layout."""
    return w


# Reference key (with {i} for the transformer layer) -> (our path under `urdmu`, conversion).
_FIXED_KEYS = {
    "embedding.conv_1.0.weight": (("embedding", "conv", "kernel"), _conv1d),
    "embedding.conv_1.0.bias": (("embedding", "conv", "bias"), _same),
    "Amemory.memory_block": (("a_memory", "memory_block"), _same),
    "Nmemory.memory_block": (("n_memory", "memory_block"), _same),
    "encoder_mu.0.weight": (("encoder_mu", "kernel"), _linear),
    "encoder_mu.0.bias": (("encoder_mu", "bias"), _same),
    "encoder_var.0.weight": (("encoder_var", "kernel"), _linear),
    "encoder_var.0.bias": (("encoder_var", "bias"), _same),
    "cls_head.mlp.0.weight": (("cls_head", "fc1", "kernel"), _linear),
    "cls_head.mlp.0.bias": (("cls_head", "fc1", "bias"), _same),
    "cls_head.mlp.2.weight": (("cls_head", "fc2", "kernel"), _linear),
    "cls_head.mlp.2.bias": (("cls_head", "fc2", "bias"), _same),
}
_LAYER_KEYS = {
    "0.norm.weight": (("attn_norm", "scale"), _same),
    "0.norm.bias": (("attn_norm", "bias"), _same),
    "0.fn.to_qkv.weight": (("attn", "to_qkv", "kernel"), _linear),
    "0.fn.to_out.0.weight": (("attn", "to_out", "kernel"), _linear),
    "0.fn.to_out.0.bias": (("attn", "to_out", "bias"), _same),
    "1.norm.weight": (("ff_norm", "scale"), _same),
    "1.norm.bias": (("ff_norm", "bias"), _same),
    "1.fn.net.0.weight": (("ff", "net0", "kernel"), _linear),
    "1.fn.net.0.bias": (("ff", "net0", "bias"), _same),
    "1.fn.net.3.weight": (("ff", "net3", "kernel"), _linear),
    "1.fn.net.3.bias": (("ff", "net3", "bias"), _same),
}
_LAYER_PATTERN = re.compile(r"selfatt\.layers\.(\d+)\.")


def key_map(depth: int) -> dict[str, tuple[tuple, Callable[[np.ndarray], np.ndarray]]]:
    """Every reference state_dict key of a `depth`-layer WSAD -> (path in the Detector state, conversion)."""
    mapping = {key: (("urdmu", *path), fn) for key, (path, fn) in _FIXED_KEYS.items()}
    for i in range(depth):
        for suffix, (path, fn) in _LAYER_KEYS.items():
            mapping[f"selfatt.layers.{i}.{suffix}"] = (("urdmu", "layers", i, *path), fn)
    return mapping


def unwrap_state_dict(obj: dict, source: str = "checkpoint") -> dict:
    """Strip a {'state_dict': ...} wrapper and 'module.' prefixes."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    return {key.removeprefix("module."): value for key, value in obj.items()}


def model_config_from_shapes(arrays: dict[str, np.ndarray], source: str = "checkpoint") -> ml_collections.ConfigDict:
    """The model config implied by a reference state_dict: feature and hidden widths, slot counts, depth.

    The head count leaves no trace in the shapes (q, k, v, t are split after one Linear): it stays 4.
    """
    for key in ("embedding.conv_1.0.weight", "Amemory.memory_block", "Nmemory.memory_block"):
        if key not in arrays:
            raise ValueError(f"{source}: missing key {key!r}; is this a UR-DMU (WSAD) state_dict?")
    layers = {int(m.group(1)) for key in arrays if (m := _LAYER_PATTERN.match(key))}
    cfg = default_model_config()
    cfg.feature_dim = int(arrays["embedding.conv_1.0.weight"].shape[1])
    cfg.hidden = int(arrays["embedding.conv_1.0.weight"].shape[0])
    cfg.a_slots = int(arrays["Amemory.memory_block"].shape[0])
    cfg.n_slots = int(arrays["Nmemory.memory_block"].shape[0])
    cfg.depth = max(layers) + 1 if layers else 0
    if "selfatt.layers.0.1.fn.net.0.weight" in arrays:
        cfg.mlp_dim = int(arrays["selfatt.layers.0.1.fn.net.0.weight"].shape[0])
    if "cls_head.mlp.0.weight" in arrays:
        cfg.cls_hidden = int(arrays["cls_head.mlp.0.weight"].shape[0])
    return cfg


def detector_from_state_dict(arrays: dict[str, np.ndarray], *, seed: int = 0, source: str = "checkpoint"
                             ) -> tuple[Detector, ml_collections.ConfigDict]:
    """A Detector holding the reference's weights (the DARM discriminator is freshly initialised)."""
    arrays = unwrap_state_dict(arrays, source)
    model_cfg = model_config_from_shapes(arrays, source)
    mapping = key_map(model_cfg.depth)
    unknown = sorted(set(arrays) - set(mapping))
    missing = sorted(set(mapping) - set(arrays))
    if unknown or missing:
        raise ValueError(f"{source}: state_dict does not match UR-DMU's WSAD: "
                         f"unknown keys {unknown}, missing keys {missing}")
    loss_cfg = default_loss_config()
    detector = build_detector(model_cfg, loss_cfg, seed=seed)
    state = nnx.state(detector)
    flat = dict(nnx.to_flat_state(state))
    for key, (path, convert) in mapping.items():
        value = convert(np.asarray(arrays[key], dtype=np.float32))
        expected = flat[path].get_value().shape
        if value.shape != expected:
            raise ValueError(f"{source}: {key!r} has shape {np.shape(arrays[key])}, which does not fit the model "
                             f"(expected {expected} after conversion)")
        flat[path].set_value(value)
    nnx.update(detector, state)
    return detector, ml_collections.ConfigDict({"model": model_cfg, "loss": loss_cfg})


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Load a torch.save'd state_dict as numpy arrays (needs torch)."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise SystemExit("reading a PyTorch checkpoint needs PyTorch: "
                         "`pip install -e .[gen]` or `pip install torch==2.13.0` (use -c constraints.txt)") from err
    obj = torch.load(path, map_location="cpu", weights_only=True)
    obj = unwrap_state_dict(obj, path)
    return {key: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            for key, value in obj.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pavad-import-urdmu",
        description="Convert a UR-DMU PyTorch checkpoint (a WSAD state_dict saved with torch.save, "
        "such as the released UCF-Crime and XD-Violence models) into a model directory that "
        "pavad-score, pavad-eval and pavad-train read. Feature dimension, depth and slot counts "
        "are read from the weights.")
    parser.add_argument("checkpoint", help="the .pkl / .pth file written by torch.save")
    parser.add_argument("--output", required=True, help="model directory to write (config.json + state/)")
    parser.add_argument("--a-slots", type=int, help="expected abnormal memory slots (checked against the weights)")
    parser.add_argument("--n-slots", type=int, help="expected normal memory slots (checked against the weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the parts UR-DMU lacks (DARM discriminator)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pavad_jax.checkpoint import export_model  # pylint: disable=import-outside-toplevel

    arrays = read_torch_checkpoint(args.checkpoint)
    try:
        detector, config = detector_from_state_dict(arrays, seed=args.seed, source=args.checkpoint)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    for flag, field in (("a_slots", "a_slots"), ("n_slots", "n_slots")):
        wanted = getattr(args, flag)
        if wanted is not None and wanted != config.model[field]:
            raise SystemExit(f"error: --{flag.replace('_', '-')} {wanted} but {args.checkpoint} has "
                             f"{config.model[field]} slots in that bank")
    out = export_model(args.output, detector, config)
    m = config.model
    print(f"imported {args.checkpoint}: D={m.feature_dim}, depth={m.depth}, slots A/N={m.a_slots}/{m.n_slots}, "
          f"{len(arrays)} tensors -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
