"""UR-DMU's own UCF-Crime setting (the reference, trained on real abnormal videos).

  pavad-data import urdmu --list UCF_Train.list --features /data/UCF_Train_ten_crop_i3d ... --output /data/ucf/train
  pavad-train --config configs/urdmu_ucf.py --workdir runs/urdmu_ucf --config.data.dir=/data/ucf

64 normal + 64 abnormal single-crop sequences per step, T = 200, Adam lr 1e-4, weight decay
5e-5 (coupled), 3000 steps, seed 2022, evaluated every 10 steps with the best kept.
Expected (UR-DMU's paper and code): AUC 0.8697 at step 1430 on the 290 test videos (10 crops).
No DARM terms (the reference loss alone) and no pseudo-normal stream.
"""
from pavad_jax.config_base import base_config, default_loss_config


def get_config(arg=None):
    config = base_config()
    config.data.dir = ""
    config.data.segments = 200
    config.data.batch.normal = 64
    config.data.batch.abnormal = 64
    config.data.batch.pseudo_normal = 0
    config.data.abnormal_source = "real"
    config.optim.learning_rate = 1e-4
    config.optim.weight_decay = 5e-5
    config.loss = default_loss_config("urdmu")
    config.model.a_slots = 60
    config.model.n_slots = 60
    config.train.steps = 3000
    config.train.eval_every = 10
    config.train.seed = 2022
    return config
