"""The base training config every file in configs/ starts from, and its variant parser."""
from __future__ import annotations

import ml_collections

# Detector-side ablations of PA-VAD's Table 5: which DARM terms are on.
# (domain alignment on, usage-aware update on); a term that is off also gets weight 0.
ABLATIONS = {
    "urdmu": (False, False),  # UR-DMU* alone (trained on pseudo anomalies)
    "da": (True, False),      # + domain alignment
    "upd": (False, True),     # + usage-aware update
    "darm": (True, True),     # + both (PA-VAD)
}


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all training configs; each file in configs/ overrides what differs."""
    from pavad_jax.data.pipeline import default_data_config
    from pavad_jax.models.detector import default_loss_config, default_model_config

    config = ml_collections.ConfigDict()
    config.data = default_data_config()
    # The embedded benchmark: "" (use data.dir), "small" or "default"; built on first use.
    config.data.synthetic = ""
    config.data.synthetic_root = "~/.cache/pavad_jax"
    config.model = default_model_config()
    config.loss = default_loss_config()
    # Adam as torch.optim.Adam (weight decay coupled to the gradient), UR-DMU's values.
    config.optim = ml_collections.ConfigDict(
        dict(learning_rate=1e-4, weight_decay=5e-5, b1=0.9, b2=0.999, eps=1e-8))
    config.train = ml_collections.ConfigDict(dict(
        steps=3000,
        steps_per_dispatch=1,  # optimiser steps per jitted call (lax.scan); > 1 when dispatch dominates
        eval_every=10,
        checkpoint_every=100,
        log_every=10,
        keep_checkpoints=2,
        seed=2022,
        num_devices=0,  # devices in the data-parallel mesh; 0 = all (single process only)
    ))
    return config


def narrow_model(config: ml_collections.ConfigDict, *, feature_dim: int, hidden: int, slots: int,
                 heads: int | None = None) -> None:
    """Shrinks the UR-DMU (and discriminator) for `runlocal` variants that must run in seconds."""
    config.model.feature_dim = feature_dim
    config.model.hidden = hidden
    config.model.mlp_dim = hidden
    config.model.cls_hidden = hidden // 2
    config.model.a_slots = slots
    config.model.n_slots = slots
    if heads is not None:
        config.model.heads = heads
    config.loss.darm.discriminator_hidden = (hidden // 2,)


def parse_variants(arg: str | None, known: set[str]) -> set[str]:
    """'runlocal,urdmu' -> {'runlocal', 'urdmu'}; an unknown word is an error naming the choices."""
    words = {w.strip() for w in (arg or "").split(",") if w.strip()}
    unknown = words - known
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; choose from {sorted(known)}")
    return words


def apply_ablation(config: ml_collections.ConfigDict, words: set[str]) -> None:
    """Sets the DARM weights of the one Table 5 ablation named in `words` (if any)."""
    chosen = words & set(ABLATIONS)
    if len(chosen) > 1:
        raise ValueError(f"choose one ablation of {sorted(ABLATIONS)}, got {sorted(chosen)}")
    for name in chosen:
        domain_alignment, usage_update = ABLATIONS[name]
        config.loss.darm.domain_alignment = domain_alignment
        config.loss.darm.usage_update = usage_update
        if not domain_alignment:
            config.loss.weights.lambda1 = 0.0
            config.data.batch.pseudo_normal = 0  # the pseudo-normal stream only feeds L_DA
        if not usage_update:
            config.loss.weights.lambda2 = 0.0
