"""UR-DMU on XD-Violence with the reference's own settings (xd_main.py of henrryzh1/UR-DMU).

  pavad-data import urdmu --list xd/XD_Test.list --features feats/ --dataset xd --gt xd/xd_gt.npy --output XD/test
  pavad-data import urdmu --list xd/XD_Train.list --features feats/ --dataset xd --output XD/train
  pavad-train --config configs/xd.py --workdir runs/xd --config.data.dir=XD
  pavad-train --config configs/xd.py:runlocal --workdir /tmp/xd       # seconds, a tiny XD-shaped set

As xd_main.py trains: every one of the 5 crop files of a video is its own sample (XD_Train.list:
19,770 crop sequences, 9,525 of them abnormal), 64 normal + 64 abnormal per step, each stream a
shuffled pass per epoch with drop_last, T = 200; Adam lr 1e-4, weight decay 5e-5 (coupled),
3000 steps, seed 2022; evaluated every 10 steps on the 800 test videos (5 crops averaged), and
the checkpoint kept is the one with the best *AP*, not AUC. The reference's AP is
sklearn's auc(recall, precision), the trapezoidal area under the PR curve, so
train.select_by = "ap_trapezoid" (metrics.json's `ap_pr_trapezoid`).

Expected: AP 0.8166, AUC 0.9402 at step 840 (the reference's outputs/xd_best_record_2022.txt).
That record was committed with the reference's first commit (e0ac5f3), whose training forward
gathered anchor_new at the abnormal top-k (A_index); commit 152c4dc changed it to N_index, and
this port follows the fixed code. `:first_commit` trains as e0ac5f3 did
(model.quirks.anchor_at_abnormal_index = True). Not reproduced here (no XD features on this
machine). The reference resamples XD training videos with utils.random_perturb, which despite
its name is the same fixed linspace binning as UCF-Crime's (no randomness).

Variants (comma-separated): runlocal (the embedded `xd_small` synthetic set, built on first
use: D = 64, 5 crops, real abnormal training videos; a narrow model, 60 steps), first_commit.
"""
from pavad_jax.config_base import apply_runlocal, base_config, default_loss_config, parse_variants


def get_config(arg=None):
    words = parse_variants(arg, {"runlocal", "first_commit"})
    config = base_config()
    config.data.dir = ""
    config.data.sample_unit = "crop"
    config.data.segments = 200
    config.data.batch.normal = 64
    config.data.batch.abnormal = 64
    config.data.batch.pseudo_normal = 0
    config.data.abnormal_source = "real"
    config.loss = default_loss_config("urdmu")
    config.model.a_slots = 60
    config.model.n_slots = 60
    config.optim.learning_rate = 1e-4
    config.optim.weight_decay = 5e-5
    config.train.steps = 3000
    config.train.eval_every = 10
    config.train.seed = 2022
    config.train.select_by = "ap_trapezoid"  # xd_main.py keeps the best AP (its trapezoidal PR area)
    if "first_commit" in words:
        config.model.quirks.anchor_at_abnormal_index = True
    if "runlocal" in words:
        apply_runlocal(config, "xd_small")
    return config
