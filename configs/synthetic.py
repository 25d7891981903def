"""The embedded default benchmark `synthetic` with PA-VAD's DARM: the README's main job.

  pavad-train --config configs/synthetic.py --workdir runs/synthetic
  pavad-train --config configs/synthetic.py:urdmu --workdir runs/synthetic_urdmu   # UR-DMU* alone
  pavad-train --config configs/synthetic.py:runlocal --workdir /tmp/run            # seconds

The dataset (docs/data.md) is generated deterministically on first use under
data.synthetic_root: real normal videos, pseudo-abnormal and pseudo-normal videos carrying the
generator's shift, and a test set of real normal and abnormal videos with frame labels. It is
synthetic: numbers on it say that the code trains and how methods compare on a controlled
confound, not what they score on UCF-Crime.

Variants (comma-separated): runlocal (the small benchmark and a narrow model: seconds on a
CPU), and one of the Table 5 ablations urdmu | da | upd | darm (default). Expected results
(2-core CPU) are in the README's table.
"""
from pavad_jax.config_base import ABLATIONS, apply_ablation, apply_runlocal, base_config, parse_variants


def get_config(arg=None):
    words = parse_variants(arg, set(ABLATIONS) | {"runlocal"})
    config = base_config()
    config.data.synthetic = "default"
    config.data.segments = 32  # PA-VAD uses 64 on UCF-Crime; 32 keeps the main job within minutes on 2 cores
    config.data.batch.normal = 8
    config.data.batch.abnormal = 8
    config.data.batch.pseudo_normal = 8
    config.data.abnormal_source = "pseudo"  # train on pseudo anomalies only, as PA-VAD does
    config.model.feature_dim = 1024
    config.model.a_slots = 60
    config.model.n_slots = 60
    config.optim.learning_rate = 1e-4
    config.optim.weight_decay = 1e-5
    # DARM weights: Table 8's UCF-Crime column.
    config.loss.weights.lambda1 = 1.0
    config.loss.weights.lambda2 = 0.1
    config.loss.weights.lambda_da = 0.1
    config.loss.weights.lambda_dist = 0.01
    config.loss.weights.beta = 1.0
    config.train.steps = 400
    config.train.steps_per_dispatch = 10
    config.train.eval_every = 50
    config.train.checkpoint_every = 100
    config.train.log_every = 10
    if "runlocal" in words:
        apply_runlocal(config, "small")
        config.data.batch.pseudo_normal = 4
    apply_ablation(config, words)
    return config
