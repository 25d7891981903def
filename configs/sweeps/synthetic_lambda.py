"""A λ1 x λ2 sweep of PA-VAD's DARM on the embedded synthetic benchmark.

  pavad-sweep --config configs/sweeps/synthetic_lambda.py:runlocal --workdir /tmp/sweep_local
  pavad-sweep --config configs/sweeps/synthetic_lambda.py --workdir runs/sweep_synthetic

runlocal: 8 members (λ1 ∈ {0, 1} x λ2 ∈ {0, 0.1} x 2 seeds) of a small UR-DMU + DARM on the
"small" synthetic benchmark (D = 64), one vmapped program, seconds on a CPU. The default
variant sweeps λ1 x λ2 x λ_dist x seed (36 members) on the "default" benchmark (D = 1024,
UR-DMU's architecture) in groups of 12. Expected: every member reaches a frame AUC well above
0.5; sweep_results.csv, auc_vs_*.png and a λ1 x λ2 heatmap land in the workdir.

Schedules (docs/sweeps.md): `:runlocal,halving` is successive halving (rungs at 10, 20, 30
steps, eta 2); `:runlocal,pbt` is PBT over λ1 and the learning rate at every evaluation (a zero λ1 stays zero: perturbations multiply).

  pavad-sweep --config configs/sweeps/synthetic_lambda.py:runlocal,halving --workdir /tmp/sweep_sh
"""
import ml_collections

from pavad_jax.config_base import base_config, narrow_model, parse_variants


def get_config(arg=None):
    words = parse_variants(arg, {"runlocal", "halving", "pbt"})
    config = base_config()
    config.data.synthetic = "small" if "runlocal" in words else "default"
    config.data.segments = 32
    config.data.batch.normal = 4
    config.data.batch.abnormal = 4
    config.data.batch.pseudo_normal = 4
    config.data.device_resident = True
    config.data.eval_buckets = (128, 512)
    config.optim.learning_rate = 1e-4
    config.train.steps = 300
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    config.train.log_every = 10
    config.train.steps_per_dispatch = 10
    sweep = ml_collections.ConfigDict()
    sweep.kind = "grid"
    sweep.axes = ml_collections.ConfigDict({
        "lambda1": [0.0, 1.0],
        "lambda2": [0.0, 0.1],
        "lambda_dist": [0.0, 0.01, 0.1],
        "seed": [0, 1, 2],
    })
    sweep.members_per_group = 12
    if "runlocal" in words:
        narrow_model(config, feature_dim=64, hidden=32, slots=10, heads=2)
        config.model.dropout = 0.1
        config.data.segments = 16
        config.data.eval_buckets = (32, 128)
        config.optim.learning_rate = 1e-3
        config.train.steps = 40
        config.train.eval_every = 20
        config.train.checkpoint_every = 20
        config.train.log_every = 10
        config.train.steps_per_dispatch = 10
        sweep.axes = ml_collections.ConfigDict({"lambda1": [0.0, 1.0], "lambda2": [0.0, 0.1], "seed": [0, 1]})
        sweep.members_per_group = 0
    if "halving" in words:
        sweep.schedule, sweep.rungs, sweep.eta = "successive_halving", (10, 20, 30), 2
        if "runlocal" in words:
            config.train.eval_every = 10
        else:
            sweep.rungs = (100, 200)
            sweep.members_per_group = 0
    if "pbt" in words:
        sweep.schedule, sweep.ready = "pbt", config.train.eval_every
        sweep.pbt = ml_collections.ConfigDict({"hyperparameters": ["lambda1", "learning_rate"], "quantile": 0.25,
                                               "bounds": {"lambda1": (0.0, 2.0), "learning_rate": (1e-5, 1e-2)}})
        sweep.members_per_group = 0
    config.sweep = sweep
    return config
