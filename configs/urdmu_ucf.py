"""UR-DMU's own UCF-Crime setting (the reference, trained on real abnormal videos).

  pavad-data import urdmu --list UCF_Train.list --features /data/UCF_Train_ten_crop_i3d ... --output /data/ucf/train
  pavad-train --config configs/urdmu_ucf.py --workdir runs/urdmu_ucf --config.data.dir=/data/ucf
  pavad-train --config configs/urdmu_ucf.py:first_commit ...   # train as the code of the published record

As ucf_main.py trains: every crop file is its own sample (UCF_Train.list: 16,100 crop sequences,
810 abnormal and 800 normal videos x 10 crops), 64 normal + 64 abnormal per step, each stream a
shuffled pass per epoch with drop_last (125 and 126 steps), restarting independently; T = 200,
Adam lr 1e-4, weight decay 5e-5 (coupled), 3000 steps, seed 2022, evaluated every 10 steps with
the best AUC kept. No DARM terms (the reference loss alone) and no pseudo-normal stream.

Expected: AUC 0.8697 at step 1430 on the 290 test videos (10 crops), the reference's
outputs/ucf_best_record_2022.txt (AP 0.3559, trapezoidal). That record, like the released
models/ucf_trans_2022.pkl, was committed with the reference's first commit (e0ac5f3), whose
training forward gathered anchor_new at the abnormal top-k indices (A_index); commit 152c4dc
changed it to N_index, and this port follows the fixed code by default. `:first_commit` sets
model.quirks.anchor_at_abnormal_index = True to train as e0ac5f3 did. (Test-time scores do not
depend on it: an imported checkpoint scores the same either way.)
"""
from pavad_jax.config_base import base_config, default_loss_config, parse_variants


def get_config(arg=None):
    words = parse_variants(arg, {"first_commit"})
    config = base_config()
    config.data.dir = ""
    config.data.sample_unit = "crop"
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
    if "first_commit" in words:
        config.model.quirks.anchor_at_abnormal_index = True
    return config
