"""PA-VAD Table 6: AUC against the number of synthesised pseudo-abnormal clips (SHT).

  pavad-sweep --config configs/sweeps/pavad_table6.py --workdir runs/t6_sht --config.data.dir=/data/sht_pavad

Table 6 varies the training *data*: 14, 35, 70, 105, 140, 175 pseudo-abnormal clips (the
paper's full set is 175; 140 is its default). The axis `abnormal_clips` keeps a fixed random
subset of that many abnormal-stream videos (seeded by data.seed: the same for every member and
every rerun). A different subset changes the sampler's shapes, so it is a *structural* axis:
each value is its own group (one compiled program each); the seeds inside a group share it.
Needs the device-resident data mode and at least max(clips) abnormal-stream videos in train/.
Paper (SHT): 85.4, 94.6, 96.9, 97.3, 98.2, 97.7 AUC. Base: configs/sht.py (Table 8 values).
"""
import pathlib

import ml_collections

from pavad_jax.config_base import parse_variants
from pavad_jax.config_loader import load_config_file

CONFIGS = pathlib.Path(__file__).resolve().parent.parent
CLIPS = [14, 35, 70, 105, 140, 175]


def get_config(arg=None):
    parse_variants(arg, set())
    config = load_config_file(CONFIGS / "sht.py")
    config.data.device_resident = True
    config.data.abnormal_clips = 0  # 0 = all; set per member by the sweep
    config.sweep = ml_collections.ConfigDict({
        "kind": "grid",
        "axes": {"abnormal_clips": CLIPS, "seed": [2022, 2023, 2024]},
        "members_per_group": 0,
    })
    return config
