"""GV-VAD Table III: the synthetic-sample loss scale λ ∈ {0.1, 0.25, 0.5, 1, 2, learnable}.

  pavad-sweep --config configs/sweeps/gvvad_lambda.py --workdir runs/gv_lambda --config.data.dir=/data/ucf_gvvad

The base is configs/gvvad_ucf.py (UR-DMU with GV-VAD's per-sample scaling, real + synthetic
abnormal videos). The five fixed values are a traced loss weight: one compiled program. The
learnable λ adds a parameter (softplus, initialised at 0.5), which changes the parameter tree,
so those members are their own group (`gv_learnable` is a structural axis) and compile their
own program. With a learnable λ the weighted terms are normalised by the sum of the weights
(loss.gv, see docs/model.md), as a bare weighted mean would drive λ to 0.
Paper (UCF-Crime, RTFM backbone, AUC %): 0.1: 88.7, 0.25: 88.9, 0.5: 89.3, 1.0: 89.0,
2.0: 88.6, learnable: 89.2. Here the backbone is UR-DMU, so the numbers will differ.
"""
import pathlib

import ml_collections

from pavad_jax.config_base import parse_variants
from pavad_jax.config_loader import load_config_file

CONFIGS = pathlib.Path(__file__).resolve().parent.parent
FIXED = [0.1, 0.25, 0.5, 1.0, 2.0]
SEEDS = [2022, 2023]


def get_config(arg=None):
    parse_variants(arg, set())
    config = load_config_file(CONFIGS / "gvvad_ucf.py")
    members = [{"gv_lambda": lam, "gv_learnable": False, "seed": s} for lam in FIXED for s in SEEDS]
    members += [{"gv_lambda": 0.5, "gv_learnable": True, "seed": s} for s in SEEDS]
    config.sweep = ml_collections.ConfigDict({"kind": "list", "members": members, "members_per_group": 0})
    return config
