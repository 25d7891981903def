"""PA-VAD on UCF-Crime: DARM with the paper's Table 8 values.

  pavad-train --config configs/ucf.py --workdir runs/ucf --config.data.dir=/data/ucf_pavad
  pavad-train --config configs/ucf.py:urdmu --workdir runs/ucf_urdmu ...   # Table 5 ablations:
                                                  # urdmu | da | upd | darm (default)

The dataset folder holds train/ (real normal videos, pseudo-abnormal and pseudo-normal clips
from `pavad-gen run --config configs/generation/ucf.py`) and test/ (the 290 test videos, e.g.
imported with `pavad-data import urdmu`, 10 crops). Expected: PA-VAD reports 82.5 AUC on
UCF-Crime with DARM and 80.2 with UR-DMU* alone (its Table 4; Table 5's ablations are on SHT
only); not reproduced here (the generated clips are not public).

Readings of Table 8: "Batch size 4" = 4 videos per stream; "Segment number 64" = T = 64
resampled segments (top-k = 64 // 16 + 1 = 5); iterations not given (UR-DMU's 3000 kept);
τ not given (detector default).
"""
from pavad_jax.config_base import ABLATIONS, apply_ablation, base_config, parse_variants


def get_config(arg=None):
    words = parse_variants(arg, set(ABLATIONS))
    config = base_config()
    config.data.dir = ""
    config.data.segments = 64
    config.data.batch.normal = 4
    config.data.batch.abnormal = 4
    config.data.batch.pseudo_normal = 4
    config.data.abnormal_source = "pseudo"
    config.optim.learning_rate = 1e-5
    config.optim.weight_decay = 1e-5
    config.loss.weights.lambda1 = 1.0
    config.loss.weights.lambda2 = 0.1
    config.loss.weights.lambda_da = 0.1
    config.loss.weights.lambda_dist = 0.01
    config.loss.weights.beta = 1.0
    config.model.a_slots = 60
    config.model.n_slots = 60
    apply_ablation(config, words)
    return config
