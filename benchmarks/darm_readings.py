"""The open readings of PA-VAD's Eq. 13 (L_upd) on UCF-Crime-shaped random data: which keep every term bounded?

  python benchmarks/darm_readings.py --steps 200 --output /tmp/darm_readings.json
  python benchmarks/darm_readings.py --readings printed,directions --steps 60

Random non-negative 1024-d features at T = 200 (real normal rows at the mean segment norm of
real videos, 20.52; pseudo-abnormal and pseudo-normal rows at the generated one, 23.03: PA-VAD
Table 1), 4 + 4 + 4 videos a step as configs/ucf.py, the full-size UR-DMU + DARM with Table 8's
UCF-Crime weights, Adam at lr 1e-4 (ten times Table 8's, so that the weights move within a few
hundred steps). Every reading (the loss.darm fields in READINGS) trains from the same
initialisation on the same batches. Printed per reading: for every logged loss term its value
at the reference step (--reference, default 50), its largest value after it, and the ratio; a
term is "bounded" here when the ratio stays under 10, the criterion the main job is held to
(docs/model.md, "Eq. 13"). Random features carry no anomaly to learn: the point is only whether
a term runs away as the embeddings grow. Memory: a few hundred MB; time: 4-11 s a step on the
project's 2-core CPU while other jobs shared it (100 steps of two readings: about 20 minutes).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from pavad_jax import atomic
from pavad_jax.config_base import base_config
from pavad_jax.losses import compute_loss, default_loss_weights
from pavad_jax.models.detector import build_detector
from pavad_jax.engine import make_optimizer

# name -> loss.darm overrides (tau: loss.weights.tau); "directions" is the project's default,
# "printed" Eq. 13 as printed.
READINGS = {
    "printed": dict(upd_centers="raw", upd_distance="raw"),
    "directions": dict(upd_centers="normalized", upd_distance="normalized"),
    "raw_centres_directions": dict(upd_centers="raw", upd_distance="normalized"),
    "unit_centres_raw_slots": dict(upd_centers="normalized", upd_distance="raw"),
    "directions_centre_grad": dict(upd_centers="normalized", upd_distance="normalized", stop_grad_centers=False),
    "directions_usage_grad": dict(upd_centers="normalized", upd_distance="normalized", stop_grad_usage=False),
    "printed_centre_grad": dict(upd_centers="raw", upd_distance="raw", stop_grad_centers=False),
    "directions_tau0.02": dict(upd_centers="normalized", upd_distance="normalized", tau=0.02),
    "directions_tau1": dict(upd_centers="normalized", upd_distance="normalized", tau=1.0),
    "directions_eps1e-3": dict(upd_centers="normalized", upd_distance="normalized", usage_eps=1e-3),
}
# Logged values that are diagnostics, not loss terms.
DIAGNOSTICS = {"usage_min", "usage_entropy", "usage_weight_max", "da_accuracy"}
NORMS = {"normal": 20.52, "abnormal": 23.03, "pseudo_normal": 23.03}


def ucf_config(reading: dict, segments: int, dim: int):
    """configs/ucf.py's batch and DARM weights with `reading` applied, at lr 1e-4."""
    config = base_config()
    config.data.segments = segments
    config.data.batch.normal = config.data.batch.abnormal = config.data.batch.pseudo_normal = 4
    config.model.feature_dim = dim
    config.loss.weights.lambda1, config.loss.weights.lambda2 = 1.0, 0.1
    config.loss.weights.lambda_da, config.loss.weights.lambda_dist = 0.1, 0.01
    config.optim.learning_rate, config.optim.weight_decay = 1e-4, 1e-5
    reading = dict(reading)
    config.loss.weights.tau = reading.pop("tau", config.loss.weights.tau)
    config.loss.darm.update(reading)
    return config


def random_batch(rng: np.random.Generator, config) -> dict[str, np.ndarray]:
    """One batch of non-negative I3D-like features scaled to Table 1's mean segment norms."""
    rows, labels = [], []
    for stream, count in config.data.batch.items():
        x = np.abs(rng.normal(size=(count, config.data.segments, config.model.feature_dim))).astype(np.float32)
        x *= NORMS[stream] / np.linalg.norm(x, axis=-1, keepdims=True).mean()
        rows.append(x)
        labels += [float(stream == "abnormal")] * count
    counts = [config.data.batch[k] for k in ("normal", "abnormal", "pseudo_normal")]
    return {"features": np.concatenate(rows), "label": np.asarray(labels, np.float32),
            "synthetic": np.asarray([0.0] * counts[0] + [1.0] * (counts[1] + counts[2]), np.float32),
            "stream": np.repeat(np.arange(3, dtype=np.int32), counts)}


def run_reading(name: str, reading: dict, args) -> dict[str, list[float]]:
    """Per-step values of every logged term for one reading."""
    config = ucf_config(reading, args.segments, args.dim)
    detector = build_detector(config.model, config.loss, seed=args.seed)
    graphdef, params, rest = nnx.split(detector, nnx.Param, ...)
    tx = make_optimizer(config.optim)
    weights = default_loss_weights(config)

    @jax.jit
    def step(params, opt_state, batch, index):
        def loss_fn(p):
            key = jax.random.fold_in(jax.random.key(args.seed), index)
            return compute_loss(nnx.merge(graphdef, p, rest), batch, weights, key, config=config)

        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, terms

    opt_state = tx.init(params)
    rng = np.random.default_rng(args.seed)  # the same batches for every reading
    history: dict[str, list[float]] = {}
    for i in tqdm(range(args.steps), desc=name, unit="step"):
        params, opt_state, terms = step(params, opt_state, random_batch(rng, config), i)
        for term, value in jax.device_get(terms).items():
            history.setdefault(term, []).append(float(value))
    return history


def boundedness(history: dict[str, list[float]], reference: int) -> dict[str, dict[str, float]]:
    """Per loss term: its value at step `reference` (1-based), its largest value after it, and their ratio."""
    table = {}
    for term, values in history.items():
        if term in DIAGNOSTICS or len(values) < reference:
            continue
        at_ref, later = values[reference - 1], max(values[reference - 1:])
        if at_ref > 0:
            table[term] = {"at_reference": at_ref, "max_after": later, "ratio": later / at_ref}
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", default=",".join(READINGS), help=f"comma-separated, of {sorted(READINGS)}")
    parser.add_argument("--steps", type=int, default=200, help="training steps per reading")
    parser.add_argument("--reference", type=int, default=50, help="step whose values the later ones are compared with")
    parser.add_argument("--segments", type=int, default=200, help="T (UCF-Crime: 200 as the reference trains)")
    parser.add_argument("--dim", type=int, default=1024, help="feature dimension (I3D: 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the per-step histories and the table")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.readings.split(",") if n.strip()]
    unknown = sorted(set(names) - set(READINGS))
    if unknown or args.reference > args.steps:
        sys.exit(f"darm_readings: unknown readings {unknown} (choose from {sorted(READINGS)})" if unknown
                 else f"darm_readings: --reference {args.reference} is after the last step {args.steps}")
    results = {}
    for name in names:
        history = run_reading(name, READINGS[name], args)
        table = boundedness(history, args.reference)
        worst = max(table.items(), key=lambda item: item[1]["ratio"])
        results[name] = {"reading": READINGS[name], "table": table, "history": history}
        print(f"{name:24s} upd {table['upd']['at_reference']:10.4g} -> max {table['upd']['max_after']:10.4g} "
              f"(x{table['upd']['ratio']:.2f}); worst term {worst[0]} x{worst[1]['ratio']:.2f}; "
              f"finite: {all(np.isfinite(v).all() for v in history.values())}")
    if args.output:
        atomic.write_json(pathlib.Path(args.output), results, indent=1)


if __name__ == "__main__":
    main()
