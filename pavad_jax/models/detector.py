"""The top-level detector (UR-DMU + DARM discriminator + optional learnable GV-VAD lambda)
and its config defaults. docs/model.md explains every field."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pavad_jax.models.darm import DomainDiscriminator
from pavad_jax.models.urdmu import URDMU

METHODS = ("pavad", "urdmu", "gvvad")
GV_MODES = ("none", "sample", "batch")
POOL_POINTS = ("selfatt", "embedding")


def default_model_config() -> ml_collections.ConfigDict:
    """UR-DMU's architecture as the reference builds it for I3D features (D = 1024)."""
    return ml_collections.ConfigDict({
        "feature_dim": 1024,
        "hidden": 512,
        "heads": 4,
        "depth": 2,
        "mlp_dim": 512,
        "cls_hidden": 128,
        "a_slots": 60,
        "n_slots": 60,
        "dropout": 0.5,
        # Compute dtype of the training forward's matmuls: "float32" or "bfloat16" (parameters,
        # optimiser state, accumulation, elementwise ops and losses stay float32; evaluation
        # scores in float32).
        "compute_dtype": "float32",
        # The reference's quirks, reproduced by default; False gives the evident intent.
        "quirks": {
            "local_attn_column_norm": True,  # A / A.sum(-1) divides [i, j] by row j's sum
            "kl_sum_over_time": True,  # KL summed over axis 1 (time), not over features
        },
    })


def default_loss_config(method: str = "pavad") -> ml_collections.ConfigDict:
    """Loss weights (traced) and structural loss choices (static) for one of METHODS.

    pavad: UR-DMU + DARM (Table 8, UCF-Crime column); urdmu: the plain reference loss;
    gvvad: the reference loss with GV-VAD's per-sample synthetic scaling (Eq. 6, lambda 0.5).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    darm_on = method == "pavad"
    return ml_collections.ConfigDict({
        "weights": {
            "lambda1": 1.0 if darm_on else 0.0,  # weight of L_DA
            "lambda2": 0.1 if darm_on else 0.0,  # weight of L_upd
            "lambda_da": 0.1,  # gradient reversal strength (0.2 for SHT in Table 8)
            "lambda_dist": 0.01,  # weight of ||mean f_N - mean f_pseudoN||^2 inside L_DA
            "beta": 1.0,  # usage exponent of L_upd
            "tau": 0.1,  # softmax temperature of the slot assignment Q (not in the paper)
            "gv_lambda": 0.5,  # GV-VAD's synthetic-sample scale (Table III best)
        },
        "darm": {
            "domain_alignment": darm_on,  # compute L_DA (needs pseudo-normal rows in the batch)
            "usage_update": darm_on,  # compute L_upd
            "discriminator_hidden": (256,),  # hidden widths of the discriminator MLP
            "pool": "selfatt",  # embeddings mean-pooled for L_DA: "selfatt" or "embedding"
            "stop_grad_centers": True,  # mu_k carries no gradient (slots move, not features)
            "stop_grad_usage": True,  # the usage weights (u_bar / (u_k + eps))^beta carry none
            "usage_eps": 1e-6,  # epsilon in u_k + eps
        },
        "gv": {
            "mode": "sample" if method == "gvvad" else "none",  # one of GV_MODES
            "learnable": False,  # lambda as a parameter (softplus), initialised at gv_lambda
        },
    })


def validate_loss_config(loss_cfg: Any) -> None:
    """Raise a ValueError naming the field on an unknown structural choice."""
    if loss_cfg.darm.pool not in POOL_POINTS:
        raise ValueError(f"loss.darm.pool must be one of {POOL_POINTS}, got {loss_cfg.darm.pool!r}")
    if loss_cfg.gv.mode not in GV_MODES:
        raise ValueError(f"loss.gv.mode must be one of {GV_MODES}, got {loss_cfg.gv.mode!r}")
    if loss_cfg.gv.learnable and loss_cfg.gv.mode != "sample":
        raise ValueError("loss.gv.learnable needs loss.gv.mode == 'sample'")


def inverse_softplus(y: float) -> float:
    """x with softplus(x) == y, for initialising a positive parameter."""
    return y + math.log(-math.expm1(-y))


class Detector(nnx.Module):
    """Everything trained together: the UR-DMU, the DARM discriminator, GV-VAD's learnable lambda."""

    def __init__(self, model_cfg: Any, loss_cfg: Any, *, rngs: nnx.Rngs):
        validate_loss_config(loss_cfg)
        self.urdmu = URDMU(model_cfg, rngs=rngs)
        self.discriminator = DomainDiscriminator(int(model_cfg.hidden), tuple(loss_cfg.darm.discriminator_hidden),
                                                 rngs=rngs)
        # A positive lambda = softplus(raw), initialised at the configured gv_lambda.
        init = inverse_softplus(float(loss_cfg.weights.gv_lambda))
        self.gv_lambda_raw = nnx.Param(jnp.asarray(init, jnp.float32)) if loss_cfg.gv.learnable else None

    @property
    def feature_dim(self) -> int:
        return self.urdmu.feature_dim

    def learned_gv_lambda(self) -> jax.Array | None:
        """The learnable GV-VAD lambda (positive), or None when it is a fixed weight."""
        return None if self.gv_lambda_raw is None else jax.nn.softplus(self.gv_lambda_raw[...])

    def scores(self, features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Test mode: (B, T, D) or (B, crops, T, D), optional (B, T) mask -> (B, T), crops averaged."""
        return self.urdmu.scores(features, mask)


def build_detector(model_cfg: Any, loss_cfg: Any | None = None, *, seed: int = 0) -> Detector:
    """A freshly initialised Detector; loss_cfg defaults to default_loss_config()."""
    return Detector(model_cfg, loss_cfg if loss_cfg is not None else default_loss_config(), rngs=nnx.Rngs(seed))


def set_active_slots(detector: Detector, a_active: Any, n_active: Any) -> None:
    """Activate the first a_active / n_active slots of each bank (the rest are padding)."""
    for memory, active in ((detector.urdmu.a_memory, a_active), (detector.urdmu.n_memory, n_active)):
        slots = memory.slot_mask[...].shape[0]
        memory.slot_mask[...] = jnp.arange(slots) < active


def count_parameters(module: nnx.Module) -> int:
    """Number of trainable scalars (nnx.Param leaves)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))
