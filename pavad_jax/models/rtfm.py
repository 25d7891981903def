"""RTFM (Tian et al., ICCV 2021) in Flax NNX, as its official code (tianyu0207/RTFM) computes it.

The network: a multi-scale temporal network (MTN: pyramid dilated convolutions with dilations
1, 2, 4 and a non-local block, fused by a convolution, plus the input) on every crop, then a
512-128-1 scoring head. Training picks, per video, the k segments of largest feature magnitude
(after a dropout on the magnitudes), scores the video by their mean score (BCE), and pushes
abnormal magnitudes above a margin and normal ones to 0; sparsity and smoothness act on the
abnormal scores. Test scores are the sigmoid scores averaged over the crops.

Layout is channels-last: (rows, T, C), rows = videos * crops. BatchNorm uses batch statistics
in training and updates its running averages (nnx.BatchStat) in place: a training engine must
carry `nnx.state(model, nnx.BatchStat)` out of its loss function. Attribute names follow the
official state_dict (see pavad_jax.import_rtfm). Randomness is explicit: dropout keep masks
come from `dropout_masks(key, ...)`, or are given (tests feed a reference the same masks).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pavad_jax import random_bits
from pavad_jax.losses import batch_counts, bce, gv_batch_scale, gv_lambda_warmup, gv_official_scale, gv_sample_weights
from pavad_jax.models.defaults_rtfm import SSLS_MODES, rtfm_config
from pavad_jax.models.urdmu import crop_mean, flatten_crops

xavier_uniform = jax.nn.initializers.xavier_uniform()  # the official weight_init, biases 0


# ---------------------------------------------------------------------------------------------
# Layers.

class TemporalConv(nnx.Module):
    """torch Conv1d over time on (N, T, C_in), zero padding dilation * (taps // 2), as matmuls.

    Summed per-tap matmuls rather than lax.conv: XLA:CPU runs a convolution's weight gradient
    inside lax.scan far slower than a matmul (measured for UR-DMU's conv, see urdmu.py).
    """

    def __init__(self, in_channels: int, out_channels: int, taps: int, *, dilation: int = 1, use_bias: bool = True,
                 rngs: nnx.Rngs):
        self.dilation = dilation
        self.kernel = nnx.Param(xavier_uniform(rngs.params(), (taps, in_channels, out_channels)))
        self.bias = nnx.Param(jnp.zeros((out_channels,))) if use_bias else None

    def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
        """(N, T, C_in) -> (N, T, C_out). With (N, T) int `segment_ids` (videos packed in a row), a
        tap reads only steps of its own video: the zero padding of each video on its own."""
        kernel = self.kernel[...]
        taps, t = kernel.shape[0], x.shape[1]
        pad = self.dilation * (taps // 2)
        padded = jnp.pad(x, ((0, 0), (pad, pad), (0, 0))) if pad else x
        if segment_ids is not None and pad:
            ids = jnp.pad(segment_ids, ((0, 0), (pad, pad)), constant_values=-1)
            same = lambda i: (ids[:, i * self.dilation:i * self.dilation + t] == segment_ids)[..., None]
            y = sum(jnp.where(same(i), padded[:, i * self.dilation:i * self.dilation + t], 0.0) @ kernel[i]
                    for i in range(taps))
        else:
            y = sum(padded[:, i * self.dilation:i * self.dilation + t] @ kernel[i] for i in range(taps))
        return y if self.bias is None else y + self.bias[...]


class BatchNorm(nnx.Module):
    """torch BatchNorm1d over the channels of (N, T, C): momentum 0.1, eps 1e-5.

    Training normalises by the batch statistics and moves the running averages towards them
    (the variance unbiased, as torch); test mode uses the running averages. `replicas` counts
    each row that many times in the unbiased correction (a branch computed once for rows that
    the reference tiles, see lap.py).
    """

    def __init__(self, channels: int, *, scale_init: float = 1.0, momentum: float = 0.1, eps: float = 1e-5):
        self.momentum, self.eps = momentum, eps
        self.scale = nnx.Param(jnp.full((channels,), scale_init, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,)))
        self.mean = nnx.BatchStat(jnp.zeros((channels,)))
        self.var = nnx.BatchStat(jnp.ones((channels,)))

    def __call__(self, x: jax.Array, train: bool, replicas: int = 1) -> jax.Array:
        if train:
            mean = x.mean((0, 1))
            var = jnp.square(x - mean).mean((0, 1))
            n = x.shape[0] * x.shape[1] * replicas
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(var) * n / max(n - 1, 1)
        else:
            mean, var = self.mean[...], self.var[...]
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class NonLocalBlock(nnx.Module):
    """RTFM's NONLocalBlock1D (embedded dot product, no subsampling): x + BN(W((theta phi^T / T) g))."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        inter = max(channels // 2, 1)
        self.g = TemporalConv(channels, inter, 1, rngs=rngs)
        self.theta = TemporalConv(channels, inter, 1, rngs=rngs)
        self.phi = TemporalConv(channels, inter, 1, rngs=rngs)
        self.w = TemporalConv(inter, channels, 1, rngs=rngs)
        self.w_norm = BatchNorm(channels, scale_init=0.0)  # zero-initialised: the block starts as identity

    def __call__(self, x: jax.Array, train: bool, segment_ids: jax.Array | None = None, replicas: int = 1
                 ) -> jax.Array:
        """(N, T, C) -> (N, T, C); with `segment_ids`, a step's keys are its own video's steps and
        T is that video's length (padding, id 0, is no video's key)."""
        affinity = jnp.einsum("nqc,nkc->nqk", self.theta(x), self.phi(x))
        if segment_ids is None:
            affinity = affinity / x.shape[1]
        else:
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            lengths = jnp.maximum(same.sum(-1), 1).astype(affinity.dtype)
            affinity = jnp.where(same, affinity, 0.0) / lengths[..., None]
        return self.w_norm(self.w(affinity @ self.g(x)), train, replicas) + x


class MultiScaleTemporalNetwork(nnx.Module):
    """RTFM's MTN (`Aggregate`): dilated convs (1, 2, 4) and conv_4 + non-local, each D/4 wide,
    concatenated and fused by conv_5 (kernel 3), plus the input."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        if dim % 4:
            raise ValueError(f"RTFM's temporal network splits the feature dimension in 4 branches: "
                             f"feature_dim must be a multiple of 4, got {dim}")
        branch = dim // 4
        self.conv_1 = TemporalConv(dim, branch, 3, dilation=1, rngs=rngs)
        self.bn_1 = BatchNorm(branch)
        self.conv_2 = TemporalConv(dim, branch, 3, dilation=2, rngs=rngs)
        self.bn_2 = BatchNorm(branch)
        self.conv_3 = TemporalConv(dim, branch, 3, dilation=4, rngs=rngs)
        self.bn_3 = BatchNorm(branch)
        self.conv_4 = TemporalConv(dim, branch, 1, use_bias=False, rngs=rngs)
        self.non_local = NonLocalBlock(branch, rngs=rngs)
        self.conv_5 = TemporalConv(dim, dim, 3, use_bias=False, rngs=rngs)
        self.bn_5 = BatchNorm(dim)

    def __call__(self, x: jax.Array, train: bool, segment_ids: jax.Array | None = None, replicas: int = 1
                 ) -> jax.Array:
        """(N, T, D) -> (N, T, D). With (N, T) int `segment_ids` (0 = padding, k > 0 = the row's k-th
        video, as the evaluator packs rows; a bool mask as ints is one video per row), every conv
        and the non-local block see each video alone, zero-padded: as the reference on the video."""
        seg = segment_ids
        pyramid = [bn(jax.nn.relu(conv(x, seg)), train, replicas)
                   for conv, bn in ((self.conv_1, self.bn_1), (self.conv_2, self.bn_2), (self.conv_3, self.bn_3))]
        context = self.non_local(jax.nn.relu(self.conv_4(x)), train, seg, replicas)
        fused = jnp.concatenate([*pyramid, context], axis=-1)
        return self.bn_5(jax.nn.relu(self.conv_5(fused, seg)), train, replicas) + x


class ScoreHead(nnx.Module):
    """fc1 -> ReLU -> dropout -> fc2 -> ReLU -> dropout -> fc3 -> sigmoid, per segment."""

    def __init__(self, in_features: int, hidden: tuple[int, int], *, rngs: nnx.Rngs):
        def linear(a, b):
            return nnx.Linear(a, b, kernel_init=xavier_uniform, bias_init=jax.nn.initializers.zeros, rngs=rngs)

        self.fc1 = linear(in_features, hidden[0])
        self.fc2 = linear(hidden[0], hidden[1])
        self.fc3 = linear(hidden[1], 1)

    def __call__(self, x: jax.Array, masks: dict[str, jax.Array] | None, rate: float) -> jax.Array:
        """(N, T, F) -> (N, T) scores in (0, 1)."""
        h = apply_dropout(jax.nn.relu(self.fc1(x)), masks, "fc1", rate)
        h = apply_dropout(jax.nn.relu(self.fc2(h)), masks, "fc2", rate)
        return jax.nn.sigmoid(self.fc3(h))[..., 0]


def apply_dropout(x: jax.Array, masks: dict[str, jax.Array] | None, name: str, rate: float) -> jax.Array:
    """Inverted dropout with the keep mask masks[name]; the identity without masks (test mode)."""
    if masks is None or name not in masks:
        return x
    return jnp.where(masks[name], x / (1.0 - rate), 0.0)


def draw_keep_masks(key: jax.Array, shapes: dict[str, tuple[int, ...]], rate: float) -> dict[str, jax.Array]:
    """One Bernoulli(1 - rate) keep mask per named shape, each from its own fold of `key`."""
    return {name: random_bits.bernoulli(jax.random.fold_in(key, i), 1.0 - rate, shape)
            for i, (name, shape) in enumerate(sorted(shapes.items()))}


# ---------------------------------------------------------------------------------------------
# Top-k selection by feature magnitude (shared with LAP).

def magnitude_selection(features: jax.Array, scores: jax.Array, crops: int, k: int,
                        masks: dict[str, jax.Array] | None, rate: float) -> dict[str, jax.Array]:
    """RTFM's selection on (B*crops, T, F) features and (B, T) scores, normal videos first.

    Magnitudes are the L2 norms of the features averaged over crops, (B, T); per video the k
    largest (after the dropout masks `select_normal` / `select_abnormal`) are selected. Returns
    the mean score of the selected segments per video, and the mean selected feature per video
    and crop (half, crops, F) that the magnitude loss measures.
    """
    b, t = scores.shape
    half = b // 2
    per_crop = features.reshape(b, crops, t, features.shape[-1])
    magnitudes = jnp.linalg.norm(per_crop, axis=-1).mean(1)
    out = {"magnitudes": magnitudes}
    for part, rows in (("normal", slice(0, half)), ("abnormal", slice(half, b))):
        selected_on = apply_dropout(magnitudes[rows], masks, f"select_{part}", rate)
        index = jax.lax.top_k(selected_on, k)[1]  # (half, k)
        out[f"score_{part}"] = jnp.take_along_axis(scores[rows], index, axis=1).mean(1)
        out[f"feature_{part}"] = jnp.take_along_axis(per_crop[rows], index[:, None, :, None], axis=2).mean(2)
    return out


# ---------------------------------------------------------------------------------------------
# The model.

class RTFM(nnx.Module):
    """RTFM: MTN + scoring head; `scores` for test mode, `train_forward` for the loss."""

    extra_fields: tuple[str, ...] = ()  # batch fields beyond `features` that scores/loss read

    def __init__(self, model_cfg: Any, loss_cfg: Any | None = None, *, rngs: nnx.Rngs):
        loss_cfg = loss_cfg if loss_cfg is not None else rtfm_config().loss
        self.feature_dim = int(model_cfg.feature_dim)
        self.dropout_rate = float(model_cfg.dropout)
        self.topk = int(model_cfg.topk)
        self.mtn = MultiScaleTemporalNetwork(self.feature_dim, rngs=rngs)
        self.head = ScoreHead(self.feature_dim, tuple(model_cfg.head_hidden), rngs=rngs)
        self.gv_lambda = learnable_gv_lambda(loss_cfg)

    def dropout_masks(self, key: jax.Array, videos: int, crops: int, t: int) -> dict[str, jax.Array]:
        """The training forward's keep masks for `videos` videos (normal half first) of `crops` crops."""
        rows, (h1, h2) = videos * crops, (self.head.fc1.out_features, self.head.fc2.out_features)
        return draw_keep_masks(key, {"features": (rows, t, self.feature_dim), "fc1": (rows, t, h1),
                                     "fc2": (rows, t, h2), "select_normal": (videos // 2, t),
                                     "select_abnormal": (videos // 2, t)}, self.dropout_rate)

    def scores(self, features: jax.Array, mask: jax.Array | None = None, *, segment_ids: jax.Array | None = None,
               crop_chunk: int | None = None, attention_block: int | None = None) -> jax.Array:
        """Test mode: (B, T, D) or (B, crops, T, D) -> (B, T), crops averaged.

        Padding: a (B, T) bool `mask` (one left-aligned video per row) or int `segment_ids` (videos
        packed in a row, 0 = padding; each scores as on its own); scores at padded positions are 0.
        `crop_chunk` (a divisor of crops) scores that many crops at a time; `attention_block` is
        accepted for the evaluator's interface (RTFM has no attention to block).
        """
        return chunked_scores(lambda x, seg, _: self.head(self.mtn(x, False, seg), None, self.dropout_rate),
                              features, None, mask, segment_ids, crop_chunk)

    def train_forward(self, features: jax.Array, key: jax.Array | None = None,
                      masks: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
        """Training mode on (B, T, D) or (B, crops, T, D), normal videos first, as many abnormal.

        Dropout keep masks are drawn from `key` unless given; neither: no dropout. Returns the
        crop-averaged scores (B, T), the magnitude selection, and `pooled` (B, D): each video's
        MTN features averaged over crops and time (before dropout), for DARM's alignment.
        """
        x, crops = flatten_crops(features)
        videos, t = x.shape[0] // crops, x.shape[1]
        check_halves(videos)
        if masks is None and key is not None:
            masks = self.dropout_masks(key, videos, crops, t)
        h = self.mtn(x, True)
        pooled = h.reshape(videos, crops * t, -1).mean(1)
        h = apply_dropout(h, masks, "features", self.dropout_rate)
        scores = crop_mean(self.head(h, masks, self.dropout_rate), crops)
        out = magnitude_selection(h, scores, crops, self.topk, masks, self.dropout_rate)
        return {**out, "scores": scores, "pooled": pooled}


def chunked_scores(score_rows, features: jax.Array, extra: jax.Array | None, mask: jax.Array | None,
                   segment_ids: jax.Array | None, crop_chunk: int | None) -> jax.Array:
    """Test-mode scores (B, T) averaged over crops, `crop_chunk` crops at a time (lax.map over chunks).

    score_rows(x (B*chunk, T, D), segment_ids (B*chunk, T) or None, extra) -> (B*chunk, T) scores;
    `extra` is passed through (LAP's captions, (B, T, E)). Features may be float16: cast here.
    """
    if mask is not None:
        segment_ids = mask.astype(jnp.int32)
    if features.ndim not in (3, 4):
        raise ValueError(f"features must be (B, T, D) or (B, crops, T, D), got shape {features.shape}")
    x = (features if features.ndim == 4 else features[:, None]).astype(jnp.float32)
    b, crops, t, d = x.shape
    chunk = crops if crop_chunk is None else int(crop_chunk)
    if crops % chunk:
        raise ValueError(f"crop_chunk={chunk} does not divide the {crops} crops")
    seg = None if segment_ids is None else jnp.repeat(segment_ids, chunk, axis=0)

    def one_chunk(xc):  # (B, chunk, T, D) -> (B, T) summed over the chunk's crops
        return score_rows(xc.reshape(b * chunk, t, d), seg, extra).reshape(b, chunk, t).sum(1)

    chunks = x.reshape(b, crops // chunk, chunk, t, d).swapaxes(0, 1)
    s = (one_chunk(chunks[0]) if crops == chunk else jax.lax.map(one_chunk, chunks).sum(0)) / crops
    return s if segment_ids is None else jnp.where(segment_ids > 0, s, 0.0)


def check_halves(videos: int) -> None:
    if videos % 2:
        raise ValueError(f"the training batch needs as many normal as abnormal videos, got {videos} videos")


def learnable_gv_lambda(loss_cfg: Any) -> nnx.Param | None:
    """GV-VAD's learnable lambda as its code has it: a raw parameter initialised at gv_lambda."""
    if not loss_cfg.gv.learnable:
        return None
    return nnx.Param(jnp.asarray(float(loss_cfg.weights.gv_lambda), jnp.float32))


def build(config: Any, *, seed: int = 0) -> RTFM:
    """A freshly initialised RTFM from a config with .model (and optionally .loss)."""
    loss_cfg = config.loss if "loss" in config else None
    return RTFM(config.model, loss_cfg, rngs=nnx.Rngs(seed))


# ---------------------------------------------------------------------------------------------
# The loss.

def loss_weights(config: Any) -> dict[str, jax.Array]:
    """The loss weights of config.loss.weights as float32 scalars (a sweep may trace them)."""
    return {name: jnp.float32(value) for name, value in config.loss.weights.items()}


def weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """mean(values), or mean(weights * values) with weights broadcast from the leading axes."""
    if weights is None:
        return values.mean()
    return (weights.reshape(weights.shape + (1,) * (values.ndim - weights.ndim)) * values).mean()


def score_regularisers(abnormal_scores: jax.Array, view_32: bool, video_weights: jax.Array | None
                       ) -> tuple[jax.Array, jax.Array]:
    """RTFM's (sparsity, smoothness) of the abnormal scores (half, T), unweighted by lambda.

    The code flattens the abnormal scores, views them as (-1, T / 32) (view_32; T = 32 gives a
    flat vector), and takes the mean over columns of each column's L2 norm (sparsity) and the
    sum of squared differences of consecutive rows (smoothness), across video boundaries too.
    `video_weights` (half,): each row counts with its video's weight (the sparsity norm by each
    video's share of the squared scores), the paper's per-sample SSLS.
    """
    half, t = abnormal_scores.shape
    cols = 1
    if view_32:
        if t % 32:
            raise ValueError(f"loss.quirks.score_view_32 reproduces the code's view of the scores as "
                             f"(B * 64, -1), which needs T a multiple of 32, got T = {t}")
        cols = t // 32
    arr = abnormal_scores.reshape(-1, cols)
    squares = jnp.square(arr).sum(0)
    diffs = jnp.square(arr[1:] - arr[:-1])
    if video_weights is None:
        return jnp.sqrt(squares).mean(), diffs.sum()
    row_weights = jnp.repeat(video_weights, t // cols)[:, None]
    share = (row_weights * jnp.square(arr)).sum(0) / jnp.maximum(squares, 1e-30)
    return (jnp.sqrt(squares) * share).mean(), (row_weights[:-1] * diffs).sum()


def rtfm_terms(out: dict[str, jax.Array], labels: jax.Array, weights: dict[str, jax.Array], loss_cfg: Any,
               k: int, sample_weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RTFM's cost (before SSLS) and its terms from `train_forward`'s output.

    cost = BCE(video scores, labels) + alpha * mean((|m - ||f_a||| + ||f_n||)^2)
           [+ sparsity * L_sparse + smoothness * L_smooth].
    The magnitude term pairs crop c of normal video i with crop c of abnormal video i, as the
    code. sample_weights (B,) weight every per-video contribution (the paper's Eq. 6).
    """
    if loss_cfg.topk_by == "magnitude":
        video_scores = jnp.concatenate([out["score_normal"], out["score_abnormal"]])
    elif loss_cfg.topk_by == "score":
        video_scores = jax.lax.top_k(out["scores"], k)[0].mean(-1)
    else:
        raise ValueError(f"loss.topk_by must be 'magnitude' or 'score', got {loss_cfg.topk_by!r}")
    half = out["score_normal"].shape[0]
    pair_weights = None if sample_weights is None else 0.5 * (sample_weights[:half] + sample_weights[half:])
    abnormal_weights = None if sample_weights is None else sample_weights[half:]
    magnitude_abnormal = jnp.abs(weights["margin"] - jnp.linalg.norm(out["feature_abnormal"], axis=-1))
    magnitude_normal = jnp.linalg.norm(out["feature_normal"], axis=-1)
    terms = {
        "bce": weighted_mean(bce(video_scores, labels), sample_weights),
        "magnitude": weighted_mean(jnp.square(magnitude_abnormal + magnitude_normal), pair_weights),
    }
    cost = terms["bce"] + weights["alpha"] * terms["magnitude"]
    zero = jnp.zeros((), jnp.float32)
    terms["sparsity"], terms["smoothness"] = zero, zero
    if loss_cfg.sparsity_smoothness:
        terms["sparsity"], terms["smoothness"] = score_regularisers(
            out["scores"][half:], bool(loss_cfg.quirks.score_view_32), abnormal_weights)
        cost = cost + weights["sparsity"] * terms["sparsity"] + weights["smoothness"] * terms["smoothness"]
    return cost, terms


def resolve_weights(config: Any, weights: dict[str, jax.Array] | None) -> dict[str, jax.Array]:
    """config.loss.weights, with the entries of `weights` (traced, e.g. by a sweep) taking precedence."""
    resolved = loss_weights(config)
    resolved.update(weights or {})
    return resolved


def ssls_setup(model: nnx.Module, batch: dict[str, jax.Array], config: Any, weights: dict[str, jax.Array]
               ) -> tuple[int, int, jax.Array, jax.Array | None]:
    """(normal rows, abnormal rows, lambda, per-video weights for the "sample" mode or None)."""
    n_normal, n_abnormal, n_pseudo = batch_counts(config)
    if n_pseudo:
        raise ValueError(f"config.data.batch.pseudo_normal must be 0 for the {type(model).__name__} loss "
                         f"(PA-VAD's DARM is wired for UR-DMU only), got {n_pseudo}")
    gv = config.loss.gv
    if gv.mode not in SSLS_MODES:
        raise ValueError(f"loss.gv.mode must be one of {SSLS_MODES}, got {gv.mode!r}")
    if gv.warmup != "none" and gv.mode != "official":
        raise ValueError(f"loss.gv.warmup is GV-VAD's official form: it needs loss.gv.mode 'official', "
                         f"got mode {gv.mode!r}")
    gv_lambda = weights["gv_lambda"]
    if gv.learnable:
        if gv.mode == "none" or model.gv_lambda is None:
            raise ValueError("loss.gv.learnable needs loss.gv.mode != 'none' and a model built with this loss "
                             "config (it holds the raw lambda)")
        gv_lambda = model.gv_lambda[...]
    synthetic = batch["synthetic"][:n_normal + n_abnormal]
    sample_weights = gv_sample_weights(synthetic, gv_lambda) if gv.mode == "sample" else None
    return n_normal, n_abnormal, gv_lambda, sample_weights


def apply_ssls(cost: jax.Array, terms: dict[str, jax.Array], batch: dict[str, jax.Array], config: Any,
               n_normal: int, n_abnormal: int, gv_lambda: jax.Array, step: jax.Array | int | None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The total: the cost times the SSLS factor of config.loss.gv.mode; and every logged scalar.

    ("sample" weighted the terms per video already, "none" leaves the cost as it is.)
    """
    gv = config.loss.gv
    synthetic = batch["synthetic"][:n_normal + n_abnormal]
    scale = warmup = jnp.ones((), jnp.float32)
    if gv.mode == "batch":
        scale = gv_batch_scale(synthetic, gv_lambda)
    elif gv.mode == "official":
        if gv.warmup != "none":
            if step is None:
                raise ValueError("loss.gv.warmup needs the training step: call loss(..., step=step)")
            # The code counts steps from 1.
            warmup = gv_lambda_warmup(jnp.asarray(step) + 1, int(gv.max_steps), gv.warmup,
                                      warmup_ratio=float(gv.warmup_ratio), offset=int(gv.warmup_offset))
        scale = gv_official_scale(synthetic[n_normal:], gv_lambda, warmup)
    total = cost * scale
    terms = {**terms, "cost": cost, "ssls_scale": scale, "gv_warmup": warmup,
             "gv_lambda": jnp.asarray(gv_lambda, jnp.float32), "total": total}
    return total, terms


def loss(model: RTFM, batch: dict[str, jax.Array], key: jax.Array | None, config: Any, *,
         weights: dict[str, jax.Array] | None = None, step: jax.Array | int | None = None
         ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RTFM's training loss on a trainer batch: (total, terms).

    batch: features (B, T, D) or (B, crops, T, D), label (B,), synthetic (B,); rows normal then
    abnormal, config.data.batch.normal == .abnormal, no pseudo-normal rows. `key` drives
    dropout (None: none). `weights` override config.loss.weights; `step` (from 0) feeds the
    official lambda warm-up. Updates the model's BatchNorm running averages in place.
    """
    weights = resolve_weights(config, weights)
    n_normal, n_abnormal, gv_lambda, sample_weights = ssls_setup(model, batch, config, weights)
    n_main = n_normal + n_abnormal
    out = model.train_forward(batch["features"][:n_main], key)
    cost, terms = rtfm_terms(out, batch["label"][:n_main], weights, config.loss, model.topk, sample_weights)
    return apply_ssls(cost, terms, batch, config, n_normal, n_abnormal, gv_lambda, step)

