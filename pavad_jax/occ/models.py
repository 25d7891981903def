"""Flax NNX models of Rai et al.: the 3D-CNN autoencoder (A^s, A^t) and the discriminator D.

The autoencoder is the convolution-deconvolution network of MemAE (Gong et al. 2019) without
its memory module, as the paper adapts it: four Conv3D-BN-LeakyReLU layers (the first halves
H and W only, the others halve T, H and W) and four mirrored transposed convolutions, the last
one linear. Inputs and outputs are (B, T, H, W, C), channels last.

upsample="transpose" (the paper's) uses transposed convolutions; upsample="resize" repeats
voxels and applies a stride-1 convolution instead, the same receptive field at a fraction of
the cost on CPU, where XLA's transposed 3D convolutions are very slow (used by the tiny config).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

PAPER_WIDTHS = (96, 128, 256, 256)  # MemAE's video encoder widths


UPSAMPLE_MODES = ("transpose", "resize")


class ResizeConv(nnx.Module):
    """Upsampling by voxel repetition followed by a stride-1 3x3x3 convolution."""

    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int], use_bias: bool, *, rngs: nnx.Rngs):
        self.stride = stride
        self.conv = nnx.Conv(c_in, c_out, kernel_size=(3, 3, 3), padding="SAME", use_bias=use_bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for axis, factor in zip((1, 2, 3), self.stride):
            x = jnp.repeat(x, factor, axis=axis)
        return self.conv(x)


def _conv(c_in: int, c_out: int, stride, kind: str, use_bias: bool, rngs: nnx.Rngs) -> nnx.Module:
    """A 3x3x3 layer: 'down' strided conv, or an upsampling 'transpose' / 'resize' layer."""
    if kind == "resize":
        return ResizeConv(c_in, c_out, stride, use_bias, rngs=rngs)
    if kind not in ("down", "transpose"):
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {kind!r}")
    layer = nnx.Conv if kind == "down" else nnx.ConvTranspose
    return layer(c_in, c_out, kernel_size=(3, 3, 3), strides=stride, padding="SAME", use_bias=use_bias, rngs=rngs)


class ConvBlock(nnx.Module):
    """Conv3D (strided down, or upsampling) + BatchNorm + LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int], kind: str, *, rngs: nnx.Rngs):
        self.conv = _conv(c_in, c_out, stride, kind, False, rngs)
        self.norm = nnx.BatchNorm(c_out, momentum=0.9, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.leaky_relu(self.norm(self.conv(x)), 0.2)


def _strides(depth: int) -> list[tuple[int, int, int]]:
    """(1, 2, 2) for the first layer, then (2, 2, 2): T shrinks 2**(depth-1), H and W 2**depth."""
    return [(1, 2, 2)] + [(2, 2, 2)] * (depth - 1)


class ConvAutoencoder3D(nnx.Module):
    """3D-CNN autoencoder for frame clips (C=3 or 1) or flow clips (C=2)."""

    def __init__(self, channels: int, widths: Sequence[int] = PAPER_WIDTHS, upsample: str = "transpose", *,
                 rngs: nnx.Rngs):
        widths = tuple(widths)
        strides = _strides(len(widths))
        self.channels = channels
        self.time_factor, self.space_factor = 2 ** (len(widths) - 1), 2 ** len(widths)
        ins = (channels,) + widths[:-1]
        self.encoder = nnx.List([ConvBlock(i, o, s, "down", rngs=rngs) for i, o, s in zip(ins, widths, strides)])
        dec_widths = widths[::-1]
        dec_outs = dec_widths[1:]
        self.decoder = nnx.List([ConvBlock(i, o, s, upsample, rngs=rngs)
                                 for i, o, s in zip(dec_widths[:-1], dec_outs, strides[::-1][:-1])])
        self.head = _conv(widths[0], channels, strides[0], upsample, True, rngs)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raises if a (B, T, H, W, C) input cannot pass the strides and come back the same size."""
        _, t, h, w, c = shape
        if c != self.channels or t % self.time_factor or h % self.space_factor or w % self.space_factor:
            raise ValueError(f"input {shape} needs C={self.channels}, T divisible by {self.time_factor} "
                             f"and H, W divisible by {self.space_factor}")

    def __call__(self, x: jax.Array) -> jax.Array:
        self.check_shape(x.shape)
        for block in self.encoder:
            x = block(x)
        for block in self.decoder:
            x = block(x)
        return self.head(x)


class Discriminator(nnx.Module):
    """MLP on one frame's CLIP embedding: logit of 'spatial pseudo-anomaly' (label 1) vs normal (0)."""

    def __init__(self, feature_dim: int, hidden: Sequence[int] = (256,), *, rngs: nnx.Rngs):
        dims = (feature_dim,) + tuple(hidden)
        self.hidden = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(dims[:-1], dims[1:])])
        self.out = nnx.Linear(dims[-1], 1, rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        x = features
        for layer in self.hidden:
            x = nnx.relu(layer(x))
        return self.out(x)[..., 0]


def anomaly_probability(logits: jax.Array) -> jax.Array:
    """omega_3: the discriminator's probability that a frame is anomalous."""
    return jax.nn.sigmoid(logits)


def reconstruction_mse(output: jax.Array, target: jax.Array) -> jax.Array:
    """Per-clip ||output - target||^2 / (T*C*H*W): the normalisation 1/Pi of eqs. (4) and (5)."""
    return jnp.mean(jnp.square(output - target), axis=tuple(range(1, target.ndim)))
