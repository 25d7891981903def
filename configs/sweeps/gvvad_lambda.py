"""GV-VAD Table III on LAP: the synthetic-sample loss scale λ ∈ {0.1, 0.25, 0.5, 1, 2, learnable}.

  pavad-sweep --config configs/sweeps/gvvad_lambda.py --workdir runs/gv_lambda --config.data.dir=/data/gvvad_ucf
  pavad-sweep --config configs/sweeps/gvvad_lambda.py:runlocal --workdir /tmp/sweep --config.data.dir=/tmp/gvvad_tiny/dataset

The base is configs/gvvad_lap_ucf.py: LAP on CLIP-L features and caption embeddings, real +
synthetic videos, SSLS in the official code's form (the cost scaled by the abnormal loader's
real and λ-weighted synthetic fractions). Paper (UCF-Crime, LAP, AUC %): 0.1: 88.7,
0.25: 88.9, 0.5: 89.3, 1.0: 89.0, 2.0: 88.6, learnable: 89.2. The five fixed values are one
traced loss weight (one compiled program); the learnable λ (a raw parameter initialised at 0.5,
as runGV.sh's --VLR 0.5 --Learnable_VLR) changes the parameter tree, so those members are a
group of their own. Each value runs with the code's seeds 0, 228 and 3407. (runGV.sh's own
λ ablation started the learnable λ at 0.1, 0.25, 0.5 and 1 with seed 3407: `:code`.)
"""
import pathlib

import ml_collections

from pavad_jax.config_base import parse_variants
from pavad_jax.config_loader import load_config_file

CONFIGS = pathlib.Path(__file__).resolve().parent.parent
FIXED = [0.1, 0.25, 0.5, 1.0, 2.0]
SEEDS = [0, 228, 3407]


def get_config(arg=None):
    words = parse_variants(arg, {"runlocal", "code"})
    config = load_config_file(CONFIGS / "gvvad_lap_ucf.py", "runlocal" if "runlocal" in words else None)
    seeds = SEEDS[:1] if "runlocal" in words else SEEDS
    if "code" in words:
        members = [{"gv_lambda": lam, "gv_learnable": True, "seed": 3407} for lam in (0.1, 0.25, 0.5, 1.0)]
    else:
        members = [{"gv_lambda": lam, "gv_learnable": False, "seed": s} for lam in FIXED for s in seeds]
        members += [{"gv_lambda": 0.5, "gv_learnable": True, "seed": s} for s in seeds]
    config.sweep = ml_collections.ConfigDict({"kind": "list", "members": members, "members_per_group": 0})
    return config
