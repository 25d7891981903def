"""The top-level detector: UR-DMU + DARM discriminator + optional learnable GV-VAD lambda.

Its config defaults live in pavad_jax/config_base.py; docs/model.md explains every field."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pavad_jax.config_base import (  # noqa: F401 (the defaults are re-exported)
    GV_MODES, POOL_POINTS, UPD_SPACES, default_loss_config, default_model_config)
from pavad_jax.models.darm import DomainDiscriminator
from pavad_jax.models.urdmu import URDMU


def validate_loss_config(loss_cfg: Any) -> None:
    """Raise a ValueError naming the field on an unknown structural choice."""
    if loss_cfg.darm.pool not in POOL_POINTS:
        raise ValueError(f"loss.darm.pool must be one of {POOL_POINTS}, got {loss_cfg.darm.pool!r}")
    for field in ("upd_centers", "upd_distance"):
        if loss_cfg.darm[field] not in UPD_SPACES:
            raise ValueError(f"loss.darm.{field} must be one of {UPD_SPACES}, got {loss_cfg.darm[field]!r}")
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

    def scores(self, features: jax.Array, mask: jax.Array | None = None, **memory_bounds) -> jax.Array:
        """Test mode: (B, T, D) or (B, crops, T, D), an optional (B, T) mask or packed `segment_ids`
        -> (B, T), crops averaged (URDMU.scores: `crop_chunk`, `attention_block`)."""
        return self.urdmu.scores(features, mask, **memory_bounds)


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
