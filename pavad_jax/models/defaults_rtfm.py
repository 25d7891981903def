"""RTFM's config defaults and the GV-VAD SSLS section shared with LAP, as plain ConfigDicts.

Imports nothing heavy (no jax), so config files can read them instantly. docs/gvvad.md and the
docstrings of pavad_jax/models/rtfm.py explain the fields; the values are the official code's
(tianyu0207/RTFM option.py/train.py; GV-VAD's main_difLR_TEVAD.py for its RTFM runs).
"""
from __future__ import annotations

import ml_collections

SSLS_MODES = ("none", "sample", "batch", "official")
WARMUP_RISES = ("linear", "exponential", "cosine")
WARMUP_DECAYS = ("cosine", "step", "none")


def ssls_config() -> ml_collections.ConfigDict:
    """GV-VAD's synthetic-sample loss scaling (SSLS); off by default.

    mode: "none"; "sample" (the paper's Eq. 6: each synthetic video's loss times lambda);
    "batch" (the project's form: the loss times real + lambda * synthetic fractions of all rows);
    "official" (GV-VAD's train_tcc_difLR.py: the loss times real + lambda * warm-up * synthetic
    fractions counted over the abnormal rows only).
    """
    return ml_collections.ConfigDict({
        "mode": "none",
        "learnable": False,  # lambda as a raw parameter initialised at weights.gv_lambda (official)
        "warmup": "none",  # "none" or "<rise>_<decay>", e.g. "linear_cosine" (the code's VLR_Strategy)
        "warmup_ratio": 0.1,  # the code's warmup_ratio
        "warmup_offset": 100,  # the code calls get_warmup_lr(step + 100, ...)
        "max_steps": 1000,  # the code's max_epoch, the length of the warm-up schedule
    })


def rtfm_model_config() -> ml_collections.ConfigDict:
    """RTFM's network for I3D features (D = 2048): branches D/4 wide, head 512-128-1."""
    return ml_collections.ConfigDict({
        "name": "rtfm",
        "feature_dim": 2048,
        "head_hidden": (512, 128),
        "dropout": 0.7,
        "topk": 3,  # the code's num_segments // 10 with num_segments = 32, also when T = 64
    })


def rtfm_loss_config() -> ml_collections.ConfigDict:
    """RTFM's loss: BCE on the top-k scores + alpha * magnitude margin + sparsity + smoothness."""
    return ml_collections.ConfigDict({
        "weights": {
            "alpha": 1e-4,  # weight of the feature-magnitude margin loss
            "margin": 100.0,  # the margin m
            "sparsity": 8e-3,  # lamda2 of sparsity()
            "smoothness": 8e-4,  # lamda1 of smooth()
            "gv_lambda": 1.0,  # SSLS lambda (the code's VLR)
        },
        # RTFM trains with both regularisers; GV-VAD's RTFM runs (no --extra_loss) without them.
        "sparsity_smoothness": True,
        "quirks": {
            # The trainer views the (B, T) scores as (B*64, -1) ("batch_size * 32 * 2") before the
            # regularisers: at T = 64 they act on pairs of segments. False: one flat vector.
            "score_view_32": True,
        },
        # How a video's score for the BCE is taken: "magnitude" (RTFM: the mean score of the
        # top-k feature-magnitude segments) or "score" (the mean of the top-k scores).
        "topk_by": "magnitude",
        "gv": ssls_config(),
    })


def rtfm_config() -> ml_collections.ConfigDict:
    """{model, loss} for RTFM."""
    return ml_collections.ConfigDict({"model": rtfm_model_config(), "loss": rtfm_loss_config()})
