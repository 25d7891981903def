"""Training losses as pure functions: UR-DMU's loss (reference formula), PA-VAD's DARM
(L_DA, L_upd) and GV-VAD's synthetic-sample scaling. `compute_loss` is the trainer's entry.

Loss weights are a flat dict of float scalars, traced (a sweep vmaps over them):
lambda1, lambda2, lambda_da, lambda_dist, beta, tau, gv_lambda. Structural choices are
static fields of the loss config (`default_loss_config`). docs/model.md has the details.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pavad_jax.models.darm import gradient_reversal
from pavad_jax.config_base import UPD_SPACES
from pavad_jax.models.defaults_rtfm import WARMUP_DECAYS, WARMUP_RISES
from pavad_jax.models.detector import Detector, default_loss_config, validate_loss_config

WEIGHT_NAMES = ("lambda1", "lambda2", "lambda_da", "lambda_dist", "beta", "tau", "gv_lambda")

# The reference's fixed coefficients of its loss terms.
URDMU_COEFFICIENTS = {
    "anomaly": 1.0,
    "A_loss": 0.1,
    "panomaly": 0.1,
    "N_loss": 0.1,
    "A_Nloss": 0.1,
    "triplet": 0.1,
    "kl": 0.001,
    "distance": 0.0001,
}


def default_loss_weights(config: Any) -> dict[str, np.float32]:
    """The flat weights dict from a loss config (or from a config holding one at `.loss`): every
    entry of loss.weights (UR-DMU's are WEIGHT_NAMES; RTFM and LAP have their own)."""
    loss_cfg = config.loss if "loss" in config else config
    return {name: np.float32(value) for name, value in loss_cfg.weights.items()}


# ---------------------------------------------------------------------------- primitives

@jax.custom_vjp
def _bce(p: jax.Array, target: jax.Array) -> jax.Array:
    log_p = jnp.maximum(jnp.log(p), -100.0)
    log_not_p = jnp.maximum(jnp.log1p(-p), -100.0)
    return -(target * log_p + (1.0 - target) * log_not_p)


def _bce_fwd(p, target):
    return _bce(p, target), (p, target)


def _bce_bwd(residuals, g):
    # torch's binary_cross_entropy backward: (p - y) / max(p (1 - p), 1e-12). Finite at p = 0 and
    # p = 1, where the chain rule through the clamped logs would give 0 * inf = NaN.
    p, target = residuals
    grad_p = g * (p - target) / jnp.maximum(p * (1.0 - p), 1e-12)
    grad_target = g * (jnp.maximum(jnp.log1p(-p), -100.0) - jnp.maximum(jnp.log(p), -100.0))
    return grad_p, grad_target


_bce.defvjp(_bce_fwd, _bce_bwd)


def bce(p: jax.Array, target: jax.Array | float) -> jax.Array:
    """Elementwise binary cross-entropy on probabilities as torch's BCELoss: logs clamped at -100,
    and its gradient, finite for p in {0, 1} (a saturated sigmoid)."""
    p = jnp.asarray(p)
    return _bce(p, jnp.broadcast_to(jnp.asarray(target, p.dtype), p.shape))


def bce_with_logits(logits: jax.Array, target: jax.Array | float) -> jax.Array:
    """Elementwise, numerically stable binary cross-entropy on logits."""
    return jnp.maximum(logits, 0.0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along the last axis (torch.nn.functional.normalize), NaN-free gradient at 0."""
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def triplet_margin(anchor, positive, negative, margin: float = 1.0, eps: float = 1e-6) -> jax.Array:
    """Per-sample torch TripletMarginLoss(p=2): relu(||a - p + eps|| - ||a - n + eps|| + margin)."""
    d_pos = jnp.linalg.norm(anchor - positive + eps, axis=-1)
    d_neg = jnp.linalg.norm(anchor - negative + eps, axis=-1)
    return jax.nn.relu(d_pos - d_neg + margin)


def topk_time_mean(scores: jax.Array) -> jax.Array:
    """(B, T) -> (B,): mean of the T // 16 + 1 largest scores (the reference's MIL top-k)."""
    k = scores.shape[-1] // 16 + 1
    return jax.lax.top_k(scores, k)[0].mean(-1)


# ---------------------------------------------------------------------------- UR-DMU

def urdmu_loss_per_sample(out: dict[str, jax.Array], labels: jax.Array, *, kl_sum_over_time: bool = True
                          ) -> dict[str, jax.Array]:
    """Every UR-DMU loss term per video: (B,) for `anomaly`, (B/2,) for the others.

    The terms over normal videos, abnormal videos or (normal i, abnormal i) pairs; the mean
    of each vector is the reference's term, so `reduce_terms` reproduces its loss exactly.
    """
    mu, logvar = out["mu"], out["logvar"]
    kl_inner = 1.0 + logvar - mu**2 - jnp.exp(logvar)
    if kl_sum_over_time:  # the reference: sum over axis 1 (time), mean over the features
        kl_rows = (-0.5 * kl_inner.sum(1)).mean(-1)
    else:
        kl_rows = (-0.5 * kl_inner.sum(-1)).mean(-1)
    half = out["N_att"].shape[0]
    kl = kl_rows.reshape(half, -1).mean(1)  # crop rows -> videos
    anchor, positive, negative = (l2_normalize(out[name]) for name in ("anchor", "positive", "negative"))
    distance = jax.nn.relu(100.0 - jnp.linalg.norm(out["negative_new"], axis=-1)
                           + jnp.linalg.norm(out["anchor_new"], axis=-1))
    return {
        "anomaly": bce(topk_time_mean(out["frame"]), labels),
        "A_loss": bce(topk_time_mean(out["A_att"]), 1.0),
        "panomaly": bce(topk_time_mean(1.0 - out["N_Aatt"]), 1.0),
        "N_loss": bce(out["N_att"], 1.0).mean(-1),
        "A_Nloss": bce(out["A_Natt"], 0.0).mean(-1),
        "triplet": triplet_margin(anchor, positive, negative),
        "kl": kl,
        "distance": distance,
    }


# Which videos each per-sample term belongs to (for per-sample weights).
_TERM_OWNER = {"anomaly": "all", "A_loss": "abnormal", "panomaly": "abnormal", "N_loss": "normal",
               "A_Nloss": "normal", "kl": "normal", "triplet": "pair", "distance": "pair"}


def reduce_terms(per_sample: dict[str, jax.Array], sample_weights: jax.Array | None = None,
                 normalize: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted UR-DMU total and its terms from per-video terms.

    sample_weights (B,) for the UR-DMU rows (normal half first): each term is the mean of
    weight * loss over its videos (sum / sum of weights if `normalize`); pair terms use the
    mean weight of the pair. None gives the reference's plain means.
    """
    terms = {}
    for name, values in per_sample.items():
        if sample_weights is None:
            terms[name] = values.mean()
            continue
        half = sample_weights.shape[0] // 2
        w = {"all": sample_weights, "normal": sample_weights[:half], "abnormal": sample_weights[half:],
             "pair": 0.5 * (sample_weights[:half] + sample_weights[half:])}[_TERM_OWNER[name]]
        terms[name] = (w * values).sum() / (w.sum() if normalize else values.shape[0])
    total = sum(URDMU_COEFFICIENTS[name] * terms[name] for name in URDMU_COEFFICIENTS)
    return total, terms


def urdmu_loss(out: dict[str, jax.Array], labels: jax.Array, *, kl_sum_over_time: bool = True
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The reference's loss: anomaly + 0.1 (A + pA + N + A_N) + 0.1 triplet + 0.001 kl + 0.0001 distance."""
    return reduce_terms(urdmu_loss_per_sample(out, labels, kl_sum_over_time=kl_sum_over_time))


# ---------------------------------------------------------------------------- GV-VAD

def gv_sample_weights(synthetic: jax.Array, gv_lambda: jax.Array) -> jax.Array:
    """GV-VAD Eq. 6: weight gv_lambda for synthetic samples, 1 for real ones."""
    return jnp.where(synthetic > 0.5, gv_lambda, 1.0)


def gv_batch_scale(synthetic: jax.Array, gv_lambda: jax.Array) -> jax.Array:
    """GV-VAD's public-code variant: the batch loss times (real fraction + lambda * synthetic fraction)."""
    synthetic_fraction = (synthetic > 0.5).mean()
    return (1.0 - synthetic_fraction) + gv_lambda * synthetic_fraction


# GV-VAD's official code (Sumutan/GV-VAD train_tcc_difLR.py, dataset_difLR.py), in its own forms.
# Its learnable lambda is a raw model parameter initialised at lambda (no softplus), updated by
# the same Adam with weight decay 5e-3 as the rest: the detectors hold it as `gv_lambda`.

def gv_official_scale(synthetic_abnormal: jax.Array, gv_lambda: jax.Array, warmup: jax.Array | float = 1.0
                      ) -> jax.Array:
    """The code's SSLS factor on the whole batch loss: cost * mean(real) + cost * mean(syn) * lambda * warmup.

    The fractions come from the abnormal loader's rows only (its `sources`), not the whole batch.
    """
    synthetic_fraction = (synthetic_abnormal > 0.5).astype(jnp.float32).mean()
    return (1.0 - synthetic_fraction) + synthetic_fraction * gv_lambda * warmup


def gv_lambda_warmup(step: jax.Array | int, max_steps: int, strategy: str, *, warmup_ratio: float = 0.1,
                     offset: int = 100) -> jax.Array:
    """The code's `get_warmup_lr(step + offset, max_steps, warmup_ratio, strategy)` factor on lambda.

    `step` counts from 1, as the code's; strategy "none" gives 1, otherwise "<rise>_<decay>":
    rise linear / exponential / cosine from 0.001 to 1 over the first int(max_steps * ratio)
    steps, then decay cosine (to 0 at max_steps, rising again after) / step (x0.1 every 200) / none.
    With the code's offset of 100 and max_steps 1000, step + 100 is never inside the rise.
    """
    if strategy == "none":
        return jnp.float32(1.0)
    rise, _, decay = strategy.partition("_")
    if rise not in WARMUP_RISES or decay not in WARMUP_DECAYS:
        raise ValueError(f"loss.gv.warmup must be 'none' or '<rise>_<decay>' with rise in {WARMUP_RISES} and "
                         f"decay in {WARMUP_DECAYS}, got {strategy!r}")
    initial, target = 0.001, 1.0
    warmup_steps = int(max_steps * warmup_ratio)
    epoch = jnp.asarray(step, jnp.float32) + offset
    progress = epoch / max(warmup_steps, 1)
    rising = {
        "linear": initial + (target - initial) * progress,
        "exponential": initial * (target / initial) ** progress,
        "cosine": initial + 0.5 * (target - initial) * (1.0 - jnp.cos(jnp.pi * progress)),
    }[rise]
    after = epoch - warmup_steps
    decaying = {
        "cosine": target * 0.5 * (1.0 + jnp.cos(jnp.pi * after / max(max_steps - warmup_steps, 1))),
        "step": target * 0.1 ** jnp.floor(after / 200.0),
        "none": jnp.full_like(after, target),
    }[decay]
    return jnp.where(epoch < warmup_steps, rising, decaying)


def dsr_indices(synthetic: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """GV-VAD's DSR on one loader's video list: int(n_real * rate) real videos drawn without
    replacement, then every synthetic video; rate 1 keeps the list as it is.

    synthetic (N,) bool in list order; returns indices into that list (numpy, for the data side).
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"DSR rate must be in (0, 1], got {rate}")
    synthetic = np.asarray(synthetic, bool)
    if rate == 1.0:
        return np.arange(synthetic.size)
    real = np.flatnonzero(~synthetic)
    kept = np.random.default_rng(seed).choice(real, int(real.size * rate), replace=False)
    return np.concatenate([kept, np.flatnonzero(synthetic)])


# ---------------------------------------------------------------------------- DARM

def domain_alignment_loss(discriminator, pooled_real: jax.Array, pooled_pseudo: jax.Array,
                          lambda_da: jax.Array, lambda_dist: jax.Array) -> dict[str, jax.Array]:
    """PA-VAD Eq. 12 on per-video mean-pooled features, real normal (n, d) and pseudo-normal (p, d).

    Domain labels: real 0, pseudo 1. Each BCE is a mean over that stream's videos. The distance
    is the squared L2 norm (summed over d) between the two streams' batch means.
    """
    logits_real = discriminator(gradient_reversal(pooled_real, lambda_da))
    logits_pseudo = discriminator(gradient_reversal(pooled_pseudo, lambda_da))
    bce_real = bce_with_logits(logits_real, 0.0).mean()
    bce_pseudo = bce_with_logits(logits_pseudo, 1.0).mean()
    dist = jnp.sum((pooled_real.mean(0) - pooled_pseudo.mean(0)) ** 2)
    correct = jnp.concatenate([logits_real < 0, logits_pseudo > 0]).astype(jnp.float32)
    return {"da_bce": bce_real + bce_pseudo, "da_dist": dist, "da_total": bce_real + bce_pseudo + lambda_dist * dist,
            "da_accuracy": correct.mean()}


def usage_update_loss(z: jax.Array, memory: jax.Array, slot_mask: jax.Array, *, tau: jax.Array, beta: jax.Array,
                      eps: float = 1e-6, stop_grad_centers: bool = True, stop_grad_usage: bool = True,
                      centers: str = "normalized", distance: str = "normalized") -> dict[str, jax.Array]:
    """PA-VAD Eqs. 10, 11, 13: usage-aware pull of abnormal slots towards their centres.

    z (n, d): abnormal embeddings unfolded over time; memory (K, d): M_A; slot_mask (K,):
    padded slots take no part (zero assignment, zero loss, zero gradient). The readings the
    paper leaves open (docs/model.md, "Eq. 13"): `centers` = "normalized" (default) takes mu_k
    over the rows of Z~ (the unit vectors Eq. 10 assigns), "raw" over Z (Eq. 13 as printed);
    `distance` = "normalized" (default) compares the directions of m_k and mu_k (each slot's
    term <= 4, its gradient orthogonal to m_k: slot norms stay the UR-DMU loss's business),
    "raw" the vectors themselves.
    """
    for name, value in (("centers", centers), ("distance", distance)):
        if value not in UPD_SPACES:
            raise ValueError(f"loss.darm.upd_{name} must be one of {UPD_SPACES}, got {value!r}")
    active = slot_mask.astype(bool)
    num_active = active.sum()
    z_unit = l2_normalize(z)
    logits = z_unit @ l2_normalize(memory).T / tau
    q = jax.nn.softmax(jnp.where(active, logits, -jnp.inf), axis=-1)  # (n, K)
    usage = q.mean(0)
    mean_usage = jnp.where(active, usage, 0.0).sum() / num_active
    center = (q.T @ (z_unit if centers == "normalized" else z)) / jnp.maximum(q.sum(0), 1e-12)[:, None]
    weights = (mean_usage / (usage + eps)) ** beta
    if stop_grad_centers:
        center = jax.lax.stop_gradient(center)
    if stop_grad_usage:
        weights = jax.lax.stop_gradient(weights)
    slots = memory
    if distance == "normalized":
        slots, center = l2_normalize(memory), l2_normalize(center)
    per_slot = jnp.where(active, weights * jnp.sum((slots - center) ** 2, axis=-1), 0.0)
    usage_entropy = -jnp.sum(jnp.where(active, usage * jnp.log(jnp.maximum(usage, 1e-30)), 0.0))
    return {"upd": per_slot.sum() / num_active, "usage_min": jnp.where(active, usage, 1.0).min(),
            "usage_entropy": usage_entropy, "usage_weight_max": jnp.where(active, weights, 0.0).max()}


# ---------------------------------------------------------------------------- entry point

def batch_counts(config: Any) -> tuple[int, int, int]:
    """Static (normal, abnormal, pseudo_normal) row counts from config.data.batch."""
    try:
        spec = config.data.batch
        counts = int(spec.normal), int(spec.abnormal), int(spec.get("pseudo_normal", 0))
    except (AttributeError, KeyError) as err:
        raise ValueError("compute_loss needs config.data.batch.{normal,abnormal,pseudo_normal}") from err
    if counts[0] != counts[1] or counts[0] < 1:
        raise ValueError(f"config.data.batch needs normal == abnormal >= 1 (UR-DMU splits the batch in halves), "
                         f"got normal={counts[0]}, abnormal={counts[1]}")
    return counts


def _loss_config(config: Any):
    """config.loss, validated; the defaults when the config has no `loss` field."""
    loss_cfg = config.loss if "loss" in config else default_loss_config()
    validate_loss_config(loss_cfg)
    return loss_cfg


def compute_loss(model: Detector, batch: dict[str, jax.Array], weights: dict[str, jax.Array], key: jax.Array, *,
                 config: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total = L_UR-DMU (GV-scaled) + lambda1 L_DA + lambda2 L_upd, and every term for logging.

    batch: features (B, T, D), label (B,), synthetic (B,), stream (B,), rows normal, abnormal,
    pseudo-normal with the counts of config.data.batch. `key` drives dropout and the UR sampling;
    an optional batch["reparam_noise"] (normal rows, T, hidden) replaces the sampling's standard
    normal draw (tests that compare with another implementation).
    """
    n_normal, n_abnormal, n_pseudo = batch_counts(config)
    loss_cfg = _loss_config(config)
    features = batch["features"]
    if features.ndim != 3 or features.shape[0] != n_normal + n_abnormal + n_pseudo:
        raise ValueError(f"batch['features'] must be (normal + abnormal + pseudo_normal = "
                         f"{n_normal + n_abnormal + n_pseudo}, T, D), got {features.shape}")
    urdmu = model.urdmu
    k_encode, k_heads = jax.random.split(key)
    embedded, h = urdmu.encode(features, key=k_encode)
    n_main = n_normal + n_abnormal
    out = urdmu.train_heads(h[:n_main], 1, k_heads, batch.get("reparam_noise"))
    per_sample = urdmu_loss_per_sample(out, batch["label"][:n_main], kl_sum_over_time=urdmu.kl_sum_over_time)

    terms: dict[str, jax.Array] = {}
    synthetic = batch["synthetic"][:n_main]
    gv_lambda = weights["gv_lambda"]
    if loss_cfg.gv.learnable:
        gv_lambda = model.learned_gv_lambda()
        if gv_lambda is None:
            raise ValueError("loss.gv.learnable is set but the model has no learnable lambda: "
                             "build the model with this loss config")
    if loss_cfg.gv.mode == "sample":
        urdmu_total, urdmu_terms = reduce_terms(per_sample, gv_sample_weights(synthetic, gv_lambda),
                                                normalize=bool(loss_cfg.gv.learnable))
    else:
        urdmu_total, urdmu_terms = reduce_terms(per_sample)
        if loss_cfg.gv.mode == "batch":
            scale = gv_batch_scale(synthetic, gv_lambda)
            urdmu_total = urdmu_total * scale
            urdmu_terms = {name: value * scale for name, value in urdmu_terms.items()}
    terms.update(urdmu_terms)
    terms["urdmu_total"] = urdmu_total
    if loss_cfg.gv.mode != "none":
        terms["gv_lambda"] = jnp.asarray(gv_lambda, jnp.float32)

    # DARM terms that are switched off are logged as 0, so every config logs the same keys.
    zero = jnp.zeros((), jnp.float32)
    terms.update(da_bce=zero, da_dist=zero, da_total=zero, da_accuracy=zero, upd=zero, usage_min=zero,
                 usage_entropy=zero, usage_weight_max=zero)
    total = urdmu_total
    if loss_cfg.darm.domain_alignment and n_pseudo > 0:
        pooled = (h if loss_cfg.darm.pool == "selfatt" else embedded).mean(1)
        da = domain_alignment_loss(model.discriminator, pooled[:n_normal], pooled[n_main:],
                                   weights["lambda_da"], weights["lambda_dist"])
        terms.update(da)
        total = total + weights["lambda1"] * da["da_total"]
    if loss_cfg.darm.usage_update:
        z = h[n_normal:n_main].reshape(-1, h.shape[-1])
        upd = usage_update_loss(z, urdmu.a_memory.memory_block[...], urdmu.a_memory.slot_mask[...],
                                tau=weights["tau"], beta=weights["beta"], eps=float(loss_cfg.darm.usage_eps),
                                stop_grad_centers=bool(loss_cfg.darm.stop_grad_centers),
                                stop_grad_usage=bool(loss_cfg.darm.stop_grad_usage),
                                centers=loss_cfg.darm.upd_centers, distance=loss_cfg.darm.upd_distance)
        terms.update(upd)
        total = total + weights["lambda2"] * upd["upd"]
    terms["total"] = total
    return total, terms
