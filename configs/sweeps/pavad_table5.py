"""PA-VAD Table 5, detector side: DARM's domain alignment (λ1) and usage-aware update (λ2) on/off.

  pavad-sweep --config configs/sweeps/pavad_table5.py --workdir runs/t5_sht --config.data.dir=/data/sht_pavad
  pavad-sweep --config configs/sweeps/pavad_table5.py:ucf --workdir runs/t5_ucf --config.data.dir=/data/ucf_pavad

Members: λ1 ∈ {0, 1} x λ2 ∈ {0, 0.1} (off / Table 8's value) x 3 seeds, one compiled program.
"Off" is a zero weight, so all 12 members share the batch layout (pseudo-normal rows are drawn
but reach no loss when λ1 = 0): the term contributes no gradient to the detector, as in the
paper's ablation, but the random draws differ from `configs/sht.py:urdmu` (which drops the
pseudo-normal stream), so a member matches that run in distribution, not bit for bit.

Table 5's CA-PAG columns (initial image selection, prompt refinement) are generation-side: they
are two datasets (clips generated without / with refinement); run the sweep once per data dir.
Paper (SHT): DA off/upd off 94.9 (initial) / 96.0 (refined); upd only 97.6 / 97.7; DA only
96.0 / 96.8; both 98.2 (refined). Base values: configs/sht.py (Table 8) or configs/ucf.py.
"""
import pathlib

import ml_collections

from pavad_jax.config_base import parse_variants
from pavad_jax.config_loader import load_config_file

CONFIGS = pathlib.Path(__file__).resolve().parent.parent


def get_config(arg=None):
    words = parse_variants(arg, {"sht", "ucf"})
    dataset = "ucf" if "ucf" in words else "sht"
    config = load_config_file(CONFIGS / f"{dataset}.py")
    config.sweep = ml_collections.ConfigDict({
        "kind": "grid",
        "axes": {
            "lambda1": [0.0, float(config.loss.weights.lambda1)],
            "lambda2": [0.0, float(config.loss.weights.lambda2)],
            "seed": [2022, 2023, 2024],
        },
        "members_per_group": 0,
    })
    return config
