"""GV-VAD on UCF-Crime: real and synthetic videos mixed, synthetic-sample loss scaling (SSLS).

  pavad-gen gvvad --config configs/generation/gvvad_ucf.py --workdir gen/gvvad_ucf   # synthetic videos
  pavad-train --config configs/gvvad_ucf.py --workdir runs/gvvad_ucf --config.data.dir=/data/gvvad_ucf

The dataset's train/ holds real normal + real abnormal UCF-Crime videos and the synthetic
normal + abnormal ones (source "pseudo"), all as CLIP-L features (D = 768); test/ the 290 test
videos. Each synthetic sample's loss is scaled by λ = loss.weights.gv_lambda (Eq. 6; 0.5 by default,
the paper's choice). Variants: `:batch_fraction` uses GV-VAD's public-code form (the whole batch
loss scaled by the real and synthetic fractions), `:learnable` makes λ a trained parameter.
GV-VAD's own detectors are configs/gvvad_rtfm_ucf.py and configs/gvvad_lap_ucf.py; its
Table III sweep (on LAP) is configs/sweeps/gvvad_lambda.py.

GV-VAD plugs SSLS into RTFM, TEVAD and LAP; here the detector is UR-DMU (this project's
backbone), so numbers are not the paper's 89.3 AUC (GV-VAD (LAP), its Table I). Paper settings kept: Adam lr 1e-3, weight
decay 5e-3, CLIP-L 768-d features, 300 + 300 generated videos.
"""
from pavad_jax.config_base import base_config, default_loss_config, parse_variants


def get_config(arg=None):
    words = parse_variants(arg, {"batch_fraction", "learnable"})
    config = base_config()
    config.data.dir = ""
    config.data.segments = 200
    config.data.batch.normal = 32
    config.data.batch.abnormal = 32
    config.data.batch.pseudo_normal = 0
    config.data.normal_source = "any"
    config.data.abnormal_source = "any"
    config.model.feature_dim = 768
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 5e-3
    config.loss = default_loss_config("gvvad")  # UR-DMU loss, no DARM terms
    config.loss.gv.mode = "batch" if "batch_fraction" in words else "sample"
    config.loss.weights.gv_lambda = 0.5
    config.loss.gv.learnable = "learnable" in words
    return config
