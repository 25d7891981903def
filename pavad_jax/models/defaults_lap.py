"""LAP's config defaults (the detector of GV-VAD's Tables I to III), as plain ConfigDicts.

Imports nothing heavy (no jax). Values are the official code's: Sumutan/GV-VAD
model_tcc_triplet_v2_oral.py, train_tcc_difLR.py, option_difLR.py and the runs of runGV.sh
(CLIP ViT-L/14 features, D = 768, caption embeddings E = 768, T = 64, 10 crops).
"""
from __future__ import annotations

import ml_collections

from pavad_jax.models.defaults_rtfm import rtfm_loss_config, rtfm_model_config

TOPK_BY = ("magnitude", "score")


def lap_model_config() -> ml_collections.ConfigDict:
    """LAP: RTFM's temporal network on the visual and on the caption features, fused by concat."""
    cfg = rtfm_model_config()
    cfg.name = "lap"
    cfg.feature_dim = 768  # CLIP ViT-L/14 (runGV.sh --feature-size 768)
    cfg.update({
        "text_dim": 768,  # caption embedding width (--emb_dim 768)
        "prompts": 26,  # anomaly event prompts in the bank (UCF_abnormal_text_word.npy: 26 x 768)
        "aggregate_text": True,  # the caption branch through its own temporal network (--aggregate_text)
        "prompt_bank": "",  # .npy file of the (prompts, text_dim) prompt embeddings, read by `build`
    })
    return cfg


def lap_loss_config() -> ml_collections.ConfigDict:
    """RTFM's loss (all regularisers, --extra_loss) + beta * pseudo-anomaly + gamma * prompt triplet."""
    cfg = rtfm_loss_config()
    cfg.weights.update({
        "beta": 1e-3,  # weight of the pseudo-anomaly loss (the code's LAT_loss, --beta)
        "gamma": 0.1,  # weight of the prompt triplet loss (--gama)
        "triplet_margin": 1.0,
        "gv_lambda": 0.5,  # Table III's best lambda
    })
    cfg.quirks.update({
        "gamma_twice": True,  # the model multiplies the triplet loss by gamma and the trainer again
        # The code's BCE(1 - s, c) pushes the prompt-similar segments (c = 1) of abnormal videos
        # towards score 0; False: BCE(s, c), which pushes them towards 1.
        "pseudo_anomaly_inverted": True,
    })
    # The code scores a video by the mean score of its top-k feature-magnitude segments; the
    # paper's Eq. 8 averages its top-k highest scores ("score").
    cfg.topk_by = "magnitude"
    return cfg


def lap_config() -> ml_collections.ConfigDict:
    """{model, loss} for LAP."""
    return ml_collections.ConfigDict({"model": lap_model_config(), "loss": lap_loss_config()})


def tevad_config() -> ml_collections.ConfigDict:
    """TEVAD as GV-VAD runs it (main_difLR_TEVAD.py): LAP's network without the prompt losses."""
    cfg = lap_config()
    cfg.model.name = "tevad"
    cfg.model.prompts = 0
    cfg.loss.weights.beta = 0.0
    cfg.loss.weights.gamma = 0.0
    return cfg
