"""UR-DMU (Zhou et al., AAAI 2023) in Flax NNX, numerically matched to its official code.

The behaviour reproduced here is documented in shared/reference/urdmu.md and docs/model.md.
Attribute names follow the reference's state_dict keys (see `pavad_jax.import_urdmu`).

Randomness is explicit: every forward takes a `key` (None = deterministic, i.e. test mode
without dropout), so a jitted training step draws all of it from one `fold_in(rng, step)`.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pavad_jax import random_bits


class SlotMask(nnx.Variable):
    """Boolean (K,) mask of the active memory slots; not a trained parameter."""


def torch_uniform_init(fan_in: int):
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    """An nnx.Linear initialised like torch.nn.Linear."""
    init = torch_uniform_init(in_features)
    return nnx.Linear(in_features, out_features, use_bias=use_bias, kernel_init=init, bias_init=init, rngs=rngs)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when `key` is None (test mode) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = random_bits.bernoulli(key, 1.0 - rate, x.shape)  # = jax.random.bernoulli, fused
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def split_key(key: jax.Array | None, num: int) -> list[jax.Array | None]:
    """Split `key` into `num` keys, or `num` Nones in deterministic mode."""
    if key is None:
        return [None] * num
    return list(jax.random.split(key, num))


def valid_mask(lengths: jax.Array, length: int) -> jax.Array:
    """(B,) true lengths -> (B, T) bool mask of the valid positions."""
    return jnp.arange(length)[None, :] < lengths[:, None]


def local_attention_matrix(length: int, lengths: jax.Array | None = None, *, column_norm: bool = True) -> jax.Array:
    """The fixed local attention A[i, j] = exp(-|i - j| / e), normalised.

    column_norm=True reproduces the reference's `A / A.sum(-1)` broadcasting: element [i, j]
    is divided by the sum of row j. False divides by the sum of row i (rows sum to 1).
    With `lengths` (B,), positions at or beyond each video's length are excluded, so every
    video gets exactly the matrix of its unpadded length: returns (B, T, T), else (T, T).
    """
    pos = jnp.arange(1, length + 1, dtype=jnp.float32)
    raw = jnp.exp(-jnp.abs(pos[None, :] - pos[:, None]) / jnp.exp(jnp.float32(1.0)))
    if lengths is not None:
        valid = valid_mask(lengths, length).astype(jnp.float32)
        raw = raw[None] * valid[:, :, None] * valid[:, None, :]
    row_sums = raw.sum(-1)
    row_sums = jnp.where(row_sums > 0, row_sums, 1.0)  # fully padded rows stay zero
    if column_norm:
        return raw / row_sums[..., None, :]
    return raw / row_sums[..., :, None]


def topk_mean(values: jax.Array, k: jax.Array | int, valid: jax.Array | None = None,
              k_max: int | None = None) -> jax.Array:
    """Mean of the k largest entries along the last axis, skipping entries where not `valid`.

    k may be a traced integer: the static `k_max` >= k largest (default: all) are taken with
    lax.top_k and the first k kept by a mask. (lax.top_k rather than jnp.sort: the gradient of a
    sort on a batch-sharded array crashes XLA's SPMD partitioner in jaxlib 0.10.)
    """
    if valid is not None:
        values = jnp.where(valid, values, -jnp.inf)
    k_max = values.shape[-1] if k_max is None else min(k_max, values.shape[-1])
    ordered = jax.lax.top_k(values, k_max)[0]
    chosen = jnp.arange(k_max) < k
    return jnp.where(chosen, ordered, 0.0).sum(-1) / k


class TemporalEmbedding(nnx.Module):
    """Conv1d(D -> hidden, kernel 3, zero padding 1) over time, then ReLU (`embedding.conv_1`)."""

    def __init__(self, feature_dim: int, hidden: int, *, rngs: nnx.Rngs):
        init = torch_uniform_init(feature_dim * 3)
        self.conv = nnx.Conv(feature_dim, hidden, kernel_size=(3,), padding=((1, 1),),
                             kernel_init=init, bias_init=init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # self.conv(x) computed as one (B*T, 3D) x (3D, hidden) matmul over the three shifted
        # copies of x (im2col). Same result; but XLA:CPU runs a convolution's weight gradient
        # inside lax.scan (the trainer's steps_per_dispatch loop) ~100x slower than this matmul,
        # and compiles it ~10x slower (measured with pavad-bench, jaxlib 0.10).
        kernel = self.conv.kernel[...]  # (taps, D, hidden), cross-correlation as torch's Conv1d
        taps, dim, hidden = kernel.shape
        padded = jnp.pad(x, ((0, 0), (taps // 2, taps // 2), (0, 0)))
        windows = jnp.concatenate([padded[:, i:i + x.shape[1]] for i in range(taps)], axis=-1)
        return jax.nn.relu(windows @ kernel.reshape(taps * dim, hidden) + self.conv.bias[...])


class GlobalLocalAttention(nnx.Module):
    """Multi-head attention whose heads concatenate a global softmax branch and a fixed local branch."""

    def __init__(self, dim: int, heads: int, dropout_rate: float, column_norm: bool, *, rngs: nnx.Rngs):
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout_rate = dropout_rate
        self.column_norm = column_norm
        # q, k, v and t (the local branch's values), each heads * head_dim wide.
        self.to_qkv = torch_linear(dim, 4 * dim, use_bias=False, rngs=rngs)
        self.to_out = torch_linear(2 * dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None, lengths: jax.Array | None,
                 key: jax.Array | None) -> jax.Array:
        """(B, T, d) -> (B, T, d); padded keys (mask False) get no attention weight."""
        b, t, _ = x.shape
        q, k, v, loc = jnp.split(self.to_qkv(x), 4, axis=-1)
        q, k, v, loc = (u.reshape(b, t, self.heads, self.head_dim).transpose(0, 2, 1, 3) for u in (q, k, v, loc))
        dots = jnp.einsum("bhqd,bhkd->bhqk", q, k) * self.head_dim**-0.5
        if mask is not None:
            dots = jnp.where(mask[:, None, None, :], dots, jnp.finfo(dots.dtype).min)
        global_out = jax.nn.softmax(dots, axis=-1) @ v
        local = local_attention_matrix(t, lengths, column_norm=self.column_norm)
        local = local[None, None] if lengths is None else local[:, None]
        local_out = local @ loc
        out = jnp.concatenate([global_out, local_out], axis=-1)  # per head: [global | local]
        out = out.transpose(0, 2, 1, 3).reshape(b, t, 2 * self.heads * self.head_dim)
        return dropout(self.to_out(out), self.dropout_rate, key)


class FeedForward(nnx.Module):
    """Linear -> GELU (exact) -> Dropout -> Linear -> Dropout (`fn.net.0`, `fn.net.3`)."""

    def __init__(self, dim: int, mlp_dim: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.dropout_rate = dropout_rate
        self.net0 = torch_linear(dim, mlp_dim, rngs=rngs)
        self.net3 = torch_linear(mlp_dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
        k1, k2 = split_key(key, 2)
        x = dropout(jax.nn.gelu(self.net0(x), approximate=False), self.dropout_rate, k1)
        return dropout(self.net3(x), self.dropout_rate, k2)


class TransformerLayer(nnx.Module):
    """Pre-norm block: x = attn(LN(x)) + x; x = ff(LN(x)) + x."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout_rate: float, column_norm: bool, *, rngs: nnx.Rngs):
        self.attn_norm = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.attn = GlobalLocalAttention(dim, heads, dropout_rate, column_norm, rngs=rngs)
        self.ff_norm = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.ff = FeedForward(dim, mlp_dim, dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None, lengths: jax.Array | None,
                 key: jax.Array | None) -> jax.Array:
        """(B, T, d) -> (B, T, d); mask/lengths describe padding, key drives dropout (None: off)."""
        k_attn, k_ff = split_key(key, 2)
        x = self.attn(self.attn_norm(x), mask, lengths, k_attn) + x
        return self.ff(self.ff_norm(x), k_ff) + x


class MemoryUnit(nnx.Module):
    """A memory bank (K, d): sigmoid attention, top-k-mean score and readout."""

    def __init__(self, slots: int, dim: int, *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(dim)
        self.dim = dim
        self.memory_block = nnx.Param(jax.random.uniform(rngs.params(), (slots, dim), jnp.float32, -bound, bound))
        self.slot_mask = SlotMask(jnp.ones((slots,), bool))

    def active_slots(self) -> jax.Array:
        """The number of active slots (a traced integer under vmap)."""
        return self.slot_mask[...].sum()

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (B, T, d) -> (score (B, T), readout (B, T, d)); padded slots take no part."""
        active = self.slot_mask[...]
        att = jax.nn.sigmoid(jnp.einsum("btd,kd->btk", x, self.memory_block[...]) / math.sqrt(self.dim))
        att = jnp.where(active, att, 0.0)
        score = topk_mean(att, self.active_slots() // 16 + 1, active, k_max=att.shape[-1] // 16 + 1)
        readout = jnp.einsum("btk,kd->btd", att, self.memory_block[...])
        return score, readout


class ClassifierHead(nnx.Module):
    """Linear(2d -> 128) -> ReLU -> Linear(128 -> 1) -> Sigmoid (`cls_head.mlp.0`, `.mlp.2`)."""

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = torch_linear(in_features, hidden, rngs=rngs)
        self.fc2 = torch_linear(hidden, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(x))))[..., 0]


def flatten_crops(x: jax.Array) -> tuple[jax.Array, int]:
    """(B, T, D) or (B, N, T, D) -> ((B*N, T, D), N)."""
    if x.ndim == 3:
        return x, 1
    if x.ndim == 4:
        b, n, t, d = x.shape
        return x.reshape(b * n, t, d), n
    raise ValueError(f"features must be (B, T, D) or (B, crops, T, D), got shape {x.shape}")


def crop_mean(x: jax.Array, crops: int) -> jax.Array:
    """(B*N, ...) -> (B, ...): average over the crops of each video."""
    return x.reshape(x.shape[0] // crops, crops, *x.shape[1:]).mean(1)


def gather_mean(x: jax.Array, index: jax.Array) -> jax.Array:
    """x (B, T, d), index (B, k) -> mean over the k indexed time steps, (B, d)."""
    return jnp.take_along_axis(x, index[:, :, None], axis=1).mean(1)


class URDMU(nnx.Module):
    """UR-DMU's `WSAD`: temporal conv, 2 global/local attention layers, dual memory, UR, head."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        self.feature_dim = int(cfg.feature_dim)
        self.hidden = int(cfg.hidden)
        self.local_attn_column_norm = bool(cfg.quirks.local_attn_column_norm)
        self.kl_sum_over_time = bool(cfg.quirks.kl_sum_over_time)  # read by the loss
        self.embedding = TemporalEmbedding(self.feature_dim, self.hidden, rngs=rngs)
        self.layers = nnx.List([
            TransformerLayer(self.hidden, int(cfg.heads), int(cfg.mlp_dim), float(cfg.dropout),
                             self.local_attn_column_norm, rngs=rngs) for _ in range(int(cfg.depth))
        ])
        self.a_memory = MemoryUnit(int(cfg.a_slots), self.hidden, rngs=rngs)
        self.n_memory = MemoryUnit(int(cfg.n_slots), self.hidden, rngs=rngs)
        self.encoder_mu = torch_linear(self.hidden, self.hidden, rngs=rngs)
        self.encoder_var = torch_linear(self.hidden, self.hidden, rngs=rngs)
        self.cls_head = ClassifierHead(2 * self.hidden, int(cfg.cls_hidden), rngs=rngs)

    def encode(self, x: jax.Array, mask: jax.Array | None = None, key: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
        """x (B, T, D) -> (after the temporal conv, after the self-attention), each (B, T, d).

        With a (B, T) bool `mask` of valid (left-aligned) positions, padded steps are zeroed
        before the conv (as the reference's zero padding at the end) and ignored by attention.
        """
        lengths = None
        if mask is not None:
            x = jnp.where(mask[..., None], x, 0.0)
            lengths = mask.sum(-1)
        embedded = self.embedding(x)
        h = embedded
        for layer, layer_key in zip(self.layers, split_key(key, len(self.layers))):
            h = layer(h, mask, lengths, layer_key)
        return embedded, h

    def classify(self, h: jax.Array, memory_feature: jax.Array) -> jax.Array:
        """Segment scores (B, T) from the embeddings and their memory feature."""
        return self.cls_head(jnp.concatenate([h, memory_feature], axis=-1))

    def scores(self, features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Test mode: (B, T, D) or (B, crops, T, D) -> (B, T) scores averaged over crops.

        Scores at padded positions (mask False) are 0.
        """
        x, crops = flatten_crops(features)
        flat_mask = None if mask is None else jnp.repeat(mask, crops, axis=0)
        _, h = self.encode(x, flat_mask)
        _, a_read = self.a_memory(h)
        _, n_read = self.n_memory(h)
        s = crop_mean(self.classify(h, self.encoder_mu(a_read) + self.encoder_mu(n_read)), crops)
        return s if mask is None else jnp.where(mask, s, 0.0)

    def train_heads(self, h: jax.Array, crops: int, key: jax.Array | None,
                    reparam_noise: jax.Array | None = None) -> dict[str, jax.Array]:
        """The training forward after the encoder, on h (B*N, T, d): normal first half, abnormal second.

        Returns the per-video (crop-averaged) outputs the UR-DMU loss needs. `reparam_noise`
        (B*N/2, T, d) replaces the standard normal draw of the reparameterisation (tests,
        common random numbers); otherwise it is drawn from `key`.
        """
        half = h.shape[0] // 2
        k = h.shape[1] // 16 + 1
        n_x, a_x = h[:half], h[half:]
        a_att, a_aug = self.a_memory(a_x)
        n_a_att, n_a_aug = self.n_memory(a_x)
        a_n_att, a_n_aug = self.a_memory(n_x)
        n_att, n_aug = self.n_memory(n_x)
        a_index = jax.lax.top_k(a_att, k)[1]
        n_index = jax.lax.top_k(n_att, k)[1]
        p_index = jax.lax.top_k(n_a_att, k)[1]

        mu, logvar = self.encoder_mu(n_aug), self.encoder_var(n_aug)
        if reparam_noise is None:
            reparam_noise = random_bits.normal(key, mu.shape)  # = jax.random.normal, fused
        n_aug_new = mu + reparam_noise * jnp.sqrt(jnp.exp(logvar))
        a_aug_new = self.encoder_mu(a_aug)
        memory_feature = jnp.concatenate([n_aug_new + self.encoder_mu(a_n_aug), a_aug_new + self.encoder_mu(n_a_aug)])
        return {
            "frame": crop_mean(self.classify(h, memory_feature), crops),
            "A_att": crop_mean(a_att, crops),
            "N_att": crop_mean(n_att, crops),
            "A_Natt": crop_mean(a_n_att, crops),
            "N_Aatt": crop_mean(n_a_att, crops),
            "anchor": crop_mean(gather_mean(n_x, n_index), crops),
            "positive": crop_mean(gather_mean(a_x, p_index), crops),
            "negative": crop_mean(gather_mean(a_x, a_index), crops),
            "anchor_new": crop_mean(gather_mean(n_aug_new, n_index), crops),
            "negative_new": crop_mean(gather_mean(a_aug_new, a_index), crops),
            "mu": mu,  # per crop row: (B*N/2, T, d)
            "logvar": logvar,
        }

    def train_forward(self, features: jax.Array, key: jax.Array, reparam_noise: jax.Array | None = None
                      ) -> dict[str, jax.Array]:
        """Training mode on (B, T, D) or (B, N, T, D), normal videos first: every auxiliary output."""
        x, crops = flatten_crops(features)
        if (x.shape[0] // crops) % 2:
            raise ValueError(f"the training batch needs as many normal as abnormal videos, "
                             f"got {x.shape[0] // crops} videos")
        k_enc, k_heads = split_key(key, 2)
        _, h = self.encode(x, key=k_enc)
        return self.train_heads(h, crops, k_heads, reparam_noise)
