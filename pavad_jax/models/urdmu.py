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
import numpy as np
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


COMPUTE_DTYPES = ("float32", "bfloat16")


def _cast_matmul(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    return jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


@jax.custom_vjp
def _float32_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (..., K) @ w (K, N) in float32, with its weight gradient taken as x^T g on an explicitly
    transposed x. XLA:CPU transposes one operand of a weight-gradient product and chose the
    larger one, the output gradient g (the q/k/v projection's f32[2048, 1600] copies: 17 ms of a
    UR-DMU step); x^T is the smaller copy here, and the optimisation barrier keeps XLA from
    folding it back into the product. The UR-DMU step ran 5-7 % faster (2-core Xeon, AVX-512)."""
    return _cast_matmul(x, w, jnp.float32)


def _float32_matmul_fwd(x, w):
    return _cast_matmul(x, w, jnp.float32), (x, w)


def _float32_matmul_bwd(residuals, g):
    x, w = residuals
    x_t = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)
    return _cast_matmul(g, w.T, jnp.float32), _cast_matmul(x_t, g.reshape(-1, g.shape[-1]), jnp.float32)


_float32_matmul.defvjp(_float32_matmul_fwd, _float32_matmul_bwd)


def matmul(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """x @ w with both operands cast to the compute `dtype`, accumulated and returned in float32
    (a float32 product with a 2-D weight through `_float32_matmul`, for its weight gradient)."""
    if jnp.dtype(dtype) == jnp.float32 and w.ndim == 2 and x.ndim >= 2:
        return _float32_matmul(x, w)
    return _cast_matmul(x, w, dtype)


def einsum(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """jnp.einsum of two operands cast to the compute `dtype`, accumulated and returned in float32."""
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def dense(layer: nnx.Linear, x: jax.Array, dtype) -> jax.Array:
    """An nnx.Linear applied in the compute `dtype` (float32 result, float32 bias)."""
    y = matmul(x, layer.kernel[...], dtype)
    return y if layer.bias is None else y + layer.bias[...]


def valid_mask(lengths: jax.Array, length: int) -> jax.Array:
    """(B,) true lengths -> (B, T) bool mask of the valid positions."""
    return jnp.arange(length)[None, :] < lengths[:, None]


def zero_padding(x: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """x (B, T, C) with its padding positions (segment id 0) zeroed; x itself without segment ids."""
    return x if segment_ids is None else jnp.where((segment_ids > 0)[..., None], x, 0.0)


def same_video(ids_q: jax.Array, ids_k: jax.Array) -> jax.Array:
    """(B, Q), (B, K) segment ids -> (B, Q, K) bool: query and key in one video (id 0 is padding)."""
    return (ids_q[:, :, None] == ids_k[:, None, :]) & (ids_k[:, None, :] > 0)


# The local branch's weights exp(-|i - j| / e) fall below float32 resolution (relative to the
# diagonal's 1) beyond LOCAL_HALO: exp(-64 / e) = 6e-11, so for long sequences they are applied
# as a band of half-width LOCAL_HALO, in blocks of LOCAL_BLOCK queries (2 * LOCAL_HALO <= block).
# Blocks of 256 (windows of 384 keys) against 128 (256 keys): a third fewer FLOPs, larger
# products; test scoring of 1,024-6,784 rows 2-7 % faster (2-core EPYC).
LOCAL_HALO = 64
LOCAL_BLOCK = 256


def _local_raw(rows: int, cols: int, offset: int = 0) -> np.ndarray:
    """exp(-|r + offset - c| / e) for r < rows, c < cols: the unnormalised local weights."""
    distance = np.abs(np.arange(rows)[:, None] + offset - np.arange(cols)[None, :])
    return np.exp(-distance / np.float32(np.e)).astype(np.float32)


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


def _normalised_local(raw: jax.Array, values: jax.Array, sums_of_keys: jax.Array, sums_of_queries: jax.Array,
                      column_norm: bool, contract: str, dtype) -> jax.Array:
    """raw @ values with the reference's normalisation: by the key's row sum (quirk) or the query's."""
    if column_norm:
        return einsum(contract, raw, values / sums_of_keys[..., None], dtype)
    return einsum(contract, raw, values, dtype) / sums_of_queries[..., None]


def local_attention(t: jax.Array, segment_ids: jax.Array | None, column_norm: bool, dtype=jnp.float32) -> jax.Array:
    """The local branch A @ t over (B, T, C), A[i, j] = exp(-|i - j| / e) within a video, normalised.

    Row sums are those of each video's own matrix (`local_attention_matrix` of its length). Up
    to 2 * LOCAL_BLOCK steps A is one dense (T, T) matrix; beyond, a band of half-width
    LOCAL_HALO applied in blocks (memory and work linear in T instead of quadratic).
    """
    b, length, _ = t.shape
    if length <= 2 * LOCAL_BLOCK:
        if segment_ids is None:  # a constant: XLA folds it into the program
            return einsum("ij,bjc->bic", local_attention_matrix(length, column_norm=column_norm), t, dtype)
        raw = _local_raw(length, length) * same_video(segment_ids, segment_ids)
        sums = raw.sum(-1)
        sums = jnp.where(sums > 0, sums, 1.0)
        return _normalised_local(raw, t, sums, sums, column_norm, "bij,bjc->bic", dtype)
    block, halo = LOCAL_BLOCK, LOCAL_HALO
    blocks = -(-length // block)
    ids = jnp.ones((b, length), jnp.int32) if segment_ids is None else segment_ids
    # Padded coordinates: position p of the sequence sits at p + halo; block n's queries are
    # [n*block + halo, (n+1)*block + halo) and its keys the window [n*block, (n+1)*block + 2*halo).
    pad = ((0, 0), (halo, blocks * block + block - length - halo))

    def windows(a):  # (B, (blocks + 1) * block, ...) -> (B, blocks, block + 2 * halo, ...)
        here = a[:, :blocks * block].reshape(b, blocks, block, *a.shape[2:])
        ahead = a[:, block:].reshape(b, blocks, block, *a.shape[2:])[:, :, :2 * halo]
        return jnp.concatenate([here, ahead], axis=2)

    ids_padded = jnp.pad(ids, pad)
    query_ids = ids_padded[:, halo:halo + blocks * block].reshape(b, blocks, block)
    key_ids = windows(ids_padded)
    raw = _local_raw(block, block + 2 * halo, halo) * (
        (query_ids[..., :, None] == key_ids[..., None, :]) & (key_ids[..., None, :] > 0))
    sums = raw.sum(-1)  # (B, blocks, block): each query's row sum (the matrix is symmetric)
    sums = jnp.where(sums > 0, sums, 1.0)
    flat_sums = sums.reshape(b, blocks * block)[:, :length]
    if column_norm:
        values = windows(jnp.pad(t / flat_sums[..., None], pad + ((0, 0),)))
        out = einsum("bnqk,bnkc->bnqc", raw, values, dtype)
    else:
        out = einsum("bnqk,bnkc->bnqc", raw, windows(jnp.pad(t, pad + ((0, 0),))), dtype) / sums[..., None]
    return out.reshape(b, blocks * block, -1)[:, :length]


def _blocks(length: int, block: int) -> tuple[int, int]:
    """(count, size) of balanced blocks of at most `block` covering `length` (sizes multiples of 8,
    so the last block is not mostly padding)."""
    count = -(-length // block)
    return count, -(-length // count // 8) * 8


def global_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None,
                     block: int | None = None, dtype=jnp.float32) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v on (B, T, heads, d); keys of other videos and padding are masked.

    block=None computes it as one batched product (training). With `block` (test mode), one
    (row, head) pair at a time, in tiles of at most block queries x block keys with a running
    softmax (max, sum and output rescaled as each key tile arrives): memory linear in T, a tile's
    logits stay in cache, and every product is a plain 2-D matmul, which XLA:CPU runs ~1.4x faster
    than the same work batched over rows and heads (T = 6,784: ~1.3x faster than whole key rows).
    """
    b, length, heads, dim = q.shape
    ids = jnp.ones((b, length), jnp.int32) if segment_ids is None else segment_ids
    if block is None:
        qt, kt, vt = (u.transpose(0, 2, 1, 3) for u in (q, k, v))  # (B, heads, T, d)
        logits = einsum("bhqd,bhkd->bhqk", qt, kt, dtype) * dim**-0.5
        if segment_ids is not None:
            logits = jnp.where(same_video(ids, ids)[:, None], logits, -jnp.inf)
        # The softmax's division after the product, on (T, d) instead of (T, T): on XLA:CPU the
        # exp then feeds the product directly (test scoring of rows <= 512: 4-7 % faster).
        top = jax.lax.stop_gradient(logits.max(-1, keepdims=True))  # any shift gives the same softmax
        weights = jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0))  # padding queries: all 0
        total = weights.sum(-1, keepdims=True)
        out = matmul(weights, vt, dtype) / jnp.where(total > 0, total, 1.0)
        return out.transpose(0, 2, 1, 3)
    tiles, tile = _blocks(length, block)
    padded = tiles * tile

    def tiled(u):  # (B, T, ...) -> (B * heads, tiles, tile, ...): the (row, head) pairs' tiles
        if u.ndim == 4:
            u = u.transpose(0, 2, 1, 3).reshape(b * heads, length, dim)
        else:
            u = jnp.repeat(u, heads, axis=0)
        return jnp.pad(u, ((0, 0), (0, padded - length)) + ((0, 0),) * (u.ndim - 2)).reshape(
            b * heads, tiles, tile, *u.shape[2:])

    def pair(args):  # one (row, head): every query tile against every key tile
        q_tiles, ids_q_tiles, k_tiles, v_tiles, ids_k_tiles = args

        def query_tile(query):
            q_tile, ids_q = query

            def key_tile(carry, keys):
                top, total, out = carry  # running max, sum of exp(logit - max) and output, per query
                k_tile, v_tile, ids_k = keys
                logits = matmul(q_tile, k_tile, dtype) * dim**-0.5  # (tile, tile)
                same = (ids_q[:, None] == ids_k[None, :]) & (ids_k[None, :] > 0)
                logits = jnp.where(same, logits, -jnp.inf)
                new_top = jnp.maximum(top, logits.max(-1))
                shift = jnp.where(jnp.isfinite(new_top), new_top, 0.0)  # no key of its video yet
                weights = jnp.exp(logits - shift[:, None])
                rescale = jnp.exp(top - shift)
                return (new_top, total * rescale + weights.sum(-1),
                        out * rescale[:, None] + matmul(weights, v_tile, dtype)), None

            start = (jnp.full((tile,), -jnp.inf), jnp.zeros((tile,)), jnp.zeros((tile, dim)))
            (_, total, out), _ = jax.lax.scan(key_tile, start, (k_tiles, v_tiles, ids_k_tiles))
            return out / jnp.where(total > 0, total, 1.0)[:, None]  # padding queries: 0

        return jax.lax.map(query_tile, (q_tiles, ids_q_tiles))

    ids_tiles = tiled(ids)
    k_tiles = tiled(k).swapaxes(-1, -2)  # (.., d, tile): transposed once, not at every query tile
    out = jax.lax.map(pair, (tiled(q), ids_tiles, k_tiles, tiled(v), ids_tiles))  # (B * heads, tiles, tile, d)
    return out.reshape(b, heads, padded, dim)[:, :, :length].transpose(0, 2, 1, 3)


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

    def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None, dtype=jnp.float32) -> jax.Array:
        """(B, T, D) -> (B, T, hidden); with segment ids, no tap reaches into another video or padding."""
        # torch's Conv1d (cross-correlation, zero padding) as one (B*T, D) x (D, taps * hidden)
        # matmul, then each tap's output shifted into place and summed. Same result as
        # self.conv(x); XLA:CPU runs a convolution's weight gradient inside lax.scan (the trainer's
        # steps_per_dispatch loop) ~100x slower and compiles it ~10x slower (jaxlib 0.10), and
        # shifting the taps' outputs moves half the bytes of an im2col window of the inputs.
        kernel = self.conv.kernel[...]  # (taps, D, hidden)
        taps, dim, hidden = kernel.shape
        length, half = x.shape[1], taps // 2
        per_tap = jnp.split(matmul(x, kernel.transpose(1, 0, 2).reshape(dim, taps * hidden), dtype), taps, axis=-1)
        pad = ((0, 0), (half, half), (0, 0))
        shifted = [jnp.pad(y, pad)[:, i:i + length] for i, y in enumerate(per_tap)]  # tap i sees x[t + i - half]
        if segment_ids is not None:  # zero the taps of a neighbouring video (the reference's zero padding)
            ids = jnp.pad(segment_ids, ((0, 0), (half, half)))
            shifted = [jnp.where((ids[:, i:i + length] == segment_ids)[..., None], y, 0.0)
                       for i, y in enumerate(shifted)]
        return jax.nn.relu(sum(shifted) + self.conv.bias[...])


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

    def __call__(self, x: jax.Array, segment_ids: jax.Array | None, key: jax.Array | None,
                 attention_block: int | None = None, dtype=jnp.float32) -> jax.Array:
        """(B, T, d) -> (B, T, d); a position attends only to its own video (segment ids, 0 = padding).

        The reference computes to_out([global_h | A t_h for each head h]) with t = x W_t. The local
        half is linear after the fixed A and the same A serves every head, so it equals
        A (x W_local) with W_local = sum_h W_t,h W_out,local,h: one (d, d) product replaces the t
        projection and the local half of to_out (~5 % of a training step's FLOPs).
        """
        b, t, _ = x.shape
        width = self.heads * self.head_dim
        w_qkv = self.to_qkv.kernel[...]  # (d, 4 * width): q, k, v, t
        w_out = self.to_out.kernel[...].reshape(self.heads, 2, self.head_dim, -1)  # rows per head: [global | local]
        w_local = einsum("chk,hko->co", w_qkv[:, 3 * width:].reshape(-1, self.heads, self.head_dim), w_out[:, 1],
                         dtype)
        y = matmul(x, jnp.concatenate([w_qkv[:, :3 * width], w_local], axis=1), dtype)
        q, k, v = (u.reshape(b, t, self.heads, self.head_dim) for u in jnp.split(y[..., :3 * width], 3, axis=-1))
        global_out = global_attention(q, k, v, segment_ids, attention_block, dtype).reshape(b, t, width)
        out = matmul(global_out, w_out[:, 0].reshape(width, -1), dtype) + self.to_out.bias[...]
        out = out + local_attention(y[..., 3 * width:], segment_ids, self.column_norm, dtype)
        return dropout(out, self.dropout_rate, key)


class FeedForward(nnx.Module):
    """Linear -> GELU (exact) -> Dropout -> Linear -> Dropout (`fn.net.0`, `fn.net.3`)."""

    def __init__(self, dim: int, mlp_dim: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.dropout_rate = dropout_rate
        self.net0 = torch_linear(dim, mlp_dim, rngs=rngs)
        self.net3 = torch_linear(mlp_dim, dim, rngs=rngs)

    def hidden(self, x: jax.Array, key: jax.Array | None, dtype=jnp.float32) -> jax.Array:
        """The activations net3 projects: dropout(GELU(net0(x)))."""
        return dropout(jax.nn.gelu(dense(self.net0, x, dtype), approximate=False), self.dropout_rate, key)

    def __call__(self, x: jax.Array, key: jax.Array | None, dtype=jnp.float32) -> jax.Array:
        k1, k2 = split_key(key, 2)
        return dropout(dense(self.net3, self.hidden(x, k1, dtype), dtype), self.dropout_rate, k2)


class TransformerLayer(nnx.Module):
    """Pre-norm block: x = attn(LN(x)) + x; x = ff(LN(x)) + x."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout_rate: float, column_norm: bool, *, rngs: nnx.Rngs):
        self.attn_norm = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.attn = GlobalLocalAttention(dim, heads, dropout_rate, column_norm, rngs=rngs)
        self.ff_norm = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.ff = FeedForward(dim, mlp_dim, dropout_rate, rngs=rngs)

    def __call__(self, x: jax.Array, segment_ids: jax.Array | None, key: jax.Array | None,
                 attention_block: int | None = None, dtype=jnp.float32) -> jax.Array:
        """(B, T, d) -> (B, T, d); segment ids describe videos and padding, key drives dropout (None: off)."""
        k_attn, k_ff = split_key(key, 2)
        x = self.attend(x, segment_ids, k_attn, attention_block, dtype)
        return self.ff(self.norm(self.ff_norm, x, segment_ids), k_ff, dtype) + x

    def attend(self, x: jax.Array, segment_ids: jax.Array | None, key: jax.Array | None,
               attention_block: int | None = None, dtype=jnp.float32) -> jax.Array:
        """The residual stream after the attention half: attn(LN(x)) + x."""
        return self.attn(self.norm(self.attn_norm, x, segment_ids), segment_ids, key, attention_block, dtype) + x

    @staticmethod
    def norm(layer_norm: nnx.LayerNorm, x: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
        """layer_norm(x), zero at padding (segment id 0) when segment ids are given. Nothing reads
        those positions; the select also keeps XLA:CPU from fusing the norm into the next matmul,
        where its YNNPACK fusion ran the norm several times slower (test scoring 2-5 % faster,
        scores bit-identical)."""
        return zero_padding(layer_norm(x), segment_ids)


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

    def attention(self, x: jax.Array, dtype=jnp.float32) -> jax.Array:
        """x (B, T, d) -> (B, T, K) sigmoid attention over the slots, 0 on padded slots."""
        return self.attention_from_logits(einsum("btd,kd->btk", x, self.memory_block[...], dtype) / math.sqrt(self.dim))

    def attention_from_logits(self, logits: jax.Array) -> jax.Array:
        """(B, T, K) logits x M^T / sqrt(d) -> the sigmoid attention, 0 on padded slots."""
        return jnp.where(self.slot_mask[...], jax.nn.sigmoid(logits), 0.0)

    def score(self, att: jax.Array) -> jax.Array:
        """(B, T, K) attention -> (B, T): the mean of the top K//16 + 1 active slots."""
        return topk_mean(att, self.active_slots() // 16 + 1, self.slot_mask[...], k_max=att.shape[-1] // 16 + 1)

    def __call__(self, x: jax.Array, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
        """x (B, T, d) -> (score (B, T), readout (B, T, d)); padded slots take no part."""
        att = self.attention(x, dtype)
        return self.score(att), einsum("btk,kd->btd", att, self.memory_block[...], dtype)

    def encoded_readout(self, att: jax.Array, encoder: nnx.Linear, dtype=jnp.float32) -> jax.Array:
        """encoder(att @ memory) computed as att @ (memory @ W) + b: the same linear map, K instead
        of d wide (K = 60 slots against d = 512), so ~8x fewer FLOPs."""
        return matmul(att, matmul(self.memory_block[...], encoder.kernel[...], dtype), dtype) + encoder.bias[...]


class ClassifierHead(nnx.Module):
    """Linear(2d -> 128) -> ReLU -> Linear(128 -> 1) -> Sigmoid (`cls_head.mlp.0`, `.mlp.2`)."""

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.fc1 = torch_linear(in_features, hidden, rngs=rngs)
        self.fc2 = torch_linear(hidden, 1, rngs=rngs)

    def __call__(self, x: jax.Array, dtype=jnp.float32) -> jax.Array:
        return jax.nn.sigmoid(dense(self.fc2, jax.nn.relu(dense(self.fc1, x, dtype)), dtype))[..., 0]


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
        compute_dtype = str(cfg.get("compute_dtype", "float32"))
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"config.model.compute_dtype is {compute_dtype!r}, expected one of {COMPUTE_DTYPES}")
        # Matmul operands of the training forward are cast to this (accumulation, parameters,
        # optimiser state, every elementwise op and the losses stay float32); test mode is
        # float32 unless `scores(..., dtype=...)` asks.
        self.compute_dtype = jnp.dtype(compute_dtype)
        self.anchor_at_abnormal_index = bool(cfg.quirks.get("anchor_at_abnormal_index", False))
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

    def encode(self, x: jax.Array, segment_ids: jax.Array | None = None, key: jax.Array | None = None,
               attention_block: int | None = None, dtype=None) -> tuple[jax.Array, jax.Array]:
        """x (B, T, D) -> (after the temporal conv, after the self-attention), each (B, T, d) float32.

        `segment_ids` (B, T) int: which video of its row each position belongs to (1, 2, ...;
        0 = padding). Every video is encoded as if alone: the conv sees zeros beyond its ends
        (the reference's zero padding) and attention stays inside it. `attention_block` computes
        attention in tiles of that many queries and keys (see `global_attention`). `dtype`: the matmuls'
        compute dtype (default model.compute_dtype).
        """
        dtype = self.compute_dtype if dtype is None else dtype
        embedded = self._embed(x, segment_ids, dtype)
        h = embedded
        for layer, layer_key in zip(self.layers, split_key(key, len(self.layers))):
            h = layer(h, segment_ids, layer_key, attention_block, dtype)
        return embedded, h

    def _embed(self, x: jax.Array, segment_ids: jax.Array | None, dtype) -> jax.Array:
        return self.embedding(zero_padding(x, segment_ids), segment_ids, dtype)

    def classify(self, h: jax.Array, memory_feature: jax.Array, dtype=jnp.float32) -> jax.Array:
        """Segment scores (B, T) from the embeddings and their memory feature."""
        return self.cls_head(jnp.concatenate([h, memory_feature], axis=-1), dtype)

    def segment_scores(self, residual: jax.Array, hidden: jax.Array, dtype=jnp.float32) -> jax.Array:
        """Test-mode scores (B, T): cls_head([h, mu(A readout) + mu(N readout)]) of the encoding
        h = residual + net3(hidden), given as the last layer's residual stream after attention
        and its feed-forward activations (`TransformerLayer.attend`, `FeedForward.hidden`).

        Everything after GELU reads h through linear maps: the head's first layer on h and the
        memory logits h M^T / sqrt(d) (R below, d x (cls_hidden + K_a + K_n)). So h R is computed
        as residual R + hidden (W3 R) + b3 R without h itself (~2 % fewer FLOPs of the test
        forward), and the readouts, encoder_mu and the head's memory half are linear in the memory
        attention: one (K, cls_hidden) matrix per bank (~10 % fewer). The differences are float32 rounding.
        """
        fc1, net3 = self.cls_head.fc1, self.layers[-1].ff.net3
        w_h, w_mem = jnp.split(fc1.kernel[...], 2, axis=0)
        banks = (self.a_memory, self.n_memory)
        reads = jnp.concatenate([w_h] + [bank.memory_block[...].T / math.sqrt(bank.dim) for bank in banks], axis=1)
        projected = (matmul(residual, reads, dtype) + matmul(hidden, net3.kernel[...] @ reads, dtype)
                     + net3.bias[...] @ reads)
        pre_h, *logits = jnp.split(projected, np.cumsum([w_h.shape[1]] + [bank.memory_block.shape[0] for bank in banks])[:-1],
                                   axis=-1)
        pre = pre_h + fc1.bias[...] + 2.0 * (self.encoder_mu.bias[...] @ w_mem)
        for bank, logit in zip(banks, logits):
            projection = (bank.memory_block[...] @ self.encoder_mu.kernel[...]) @ w_mem  # (K, cls_hidden)
            pre = pre + matmul(bank.attention_from_logits(logit), projection, dtype)
        return jax.nn.sigmoid(dense(self.cls_head.fc2, jax.nn.relu(pre), dtype))[..., 0]

    def scores(self, features: jax.Array, mask: jax.Array | None = None, *, segment_ids: jax.Array | None = None,
               crop_chunk: int | None = None, attention_block: int | None = None, dtype=jnp.float32) -> jax.Array:
        """Test mode: (B, T, D) or (B, crops, T, D) -> (B, T) scores averaged over crops.

        Padding: a (B, T) bool `mask` (one left-aligned video per row), or int `segment_ids`
        (several videos packed in a row, see `encode`); scores at padded positions are 0. Memory
        bounds: `crop_chunk` (a divisor of crops) scores that many crops at a time, `attention_block`
        computes attention in tiles of that many queries and keys. Features may be float16: they are cast here. Matmuls
        run in float32 unless `dtype` asks for another compute dtype.
        """
        if mask is not None:
            segment_ids = mask.astype(jnp.int32)
        if features.ndim not in (3, 4):
            raise ValueError(f"features must be (B, T, D) or (B, crops, T, D), got shape {features.shape}")
        x = features if features.ndim == 4 else features[:, None]
        b, crops, length, dim = x.shape
        chunk = crops if crop_chunk is None else int(crop_chunk)
        if crops % chunk:
            raise ValueError(f"crop_chunk={chunk} does not divide the {crops} crops")

        def crop_sum(x_chunk):  # (B, chunk, T, D) -> (B, T): the sum of the chunk's crop scores
            ids = None if segment_ids is None else jnp.repeat(segment_ids, chunk, axis=0)
            h = self._embed(x_chunk.reshape(b * chunk, length, dim).astype(jnp.float32), ids, dtype)
            *layers, last = self.layers  # `encode` without the last projection (see segment_scores)
            for layer in layers:
                h = layer(h, ids, None, attention_block, dtype)
            residual = last.attend(h, ids, None, attention_block, dtype)
            hidden = last.ff.hidden(last.norm(last.ff_norm, residual, ids), None, dtype)
            return self.segment_scores(residual, hidden, dtype).reshape(b, chunk, length).sum(1)

        if chunk == crops:
            total = crop_sum(x)
        else:
            chunks = x.reshape(b, crops // chunk, chunk, length, dim).swapaxes(0, 1)
            total = jax.lax.map(crop_sum, chunks).sum(0)
        s = total / crops
        return s if segment_ids is None else jnp.where(segment_ids > 0, s, 0.0)

    def train_heads(self, h: jax.Array, crops: int, key: jax.Array | None,
                    reparam_noise: jax.Array | None = None) -> dict[str, jax.Array]:
        """The training forward after the encoder, on h (B*N, T, d): normal first half, abnormal second.

        Returns the per-video (crop-averaged) outputs the UR-DMU loss needs. `reparam_noise`
        (B*N/2, T, d) replaces the standard normal draw of the reparameterisation (tests,
        common random numbers); otherwise it is drawn from `key`.
        """
        dtype = self.compute_dtype
        half = h.shape[0] // 2
        k = h.shape[1] // 16 + 1
        n_x, a_x = h[:half], h[half:]
        # The reference's memory readouts (A_aug, N_aug, A_Naug, N_Aaug) only ever enter
        # encoder_mu / encoder_var, so each is computed already encoded (`encoded_readout`).
        a_mem, n_mem = self.a_memory, self.n_memory
        a_att_k, n_a_att_k = a_mem.attention(a_x, dtype), n_mem.attention(a_x, dtype)
        a_n_att_k, n_att_k = a_mem.attention(n_x, dtype), n_mem.attention(n_x, dtype)
        a_att, n_a_att, a_n_att, n_att = (bank.score(att) for bank, att in (
            (a_mem, a_att_k), (n_mem, n_a_att_k), (a_mem, a_n_att_k), (n_mem, n_att_k)))
        a_index = jax.lax.top_k(a_att, k)[1]
        n_index = jax.lax.top_k(n_att, k)[1]
        p_index = jax.lax.top_k(n_a_att, k)[1]

        mu = n_mem.encoded_readout(n_att_k, self.encoder_mu, dtype)
        logvar = n_mem.encoded_readout(n_att_k, self.encoder_var, dtype)
        if reparam_noise is None:
            reparam_noise = random_bits.normal(key, mu.shape)  # = jax.random.normal, fused
        n_aug_new = mu + reparam_noise * jnp.sqrt(jnp.exp(logvar))
        # The fixed reference (152c4dc) gathers anchor_new at the normal half's own top-k; its
        # first commit used the abnormal half's (model.quirks.anchor_at_abnormal_index).
        anchor_index = a_index if self.anchor_at_abnormal_index else n_index
        a_aug_new = a_mem.encoded_readout(a_att_k, self.encoder_mu, dtype)
        memory_feature = jnp.concatenate([n_aug_new + a_mem.encoded_readout(a_n_att_k, self.encoder_mu, dtype),
                                          a_aug_new + n_mem.encoded_readout(n_a_att_k, self.encoder_mu, dtype)])
        return {
            "frame": crop_mean(self.classify(h, memory_feature, dtype), crops),
            "A_att": crop_mean(a_att, crops),
            "N_att": crop_mean(n_att, crops),
            "A_Natt": crop_mean(a_n_att, crops),
            "N_Aatt": crop_mean(n_a_att, crops),
            "anchor": crop_mean(gather_mean(n_x, n_index), crops),
            "positive": crop_mean(gather_mean(a_x, p_index), crops),
            "negative": crop_mean(gather_mean(a_x, a_index), crops),
            "anchor_new": crop_mean(gather_mean(n_aug_new, anchor_index), crops),
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
