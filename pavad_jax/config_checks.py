"""Checks a training config before anything is compiled, naming the field at fault."""
from __future__ import annotations

import pathlib

import ml_collections

from pavad_jax import shards

LOSS_WEIGHTS_NONNEGATIVE = ("lambda1", "lambda2", "lambda_da", "lambda_dist", "beta", "gv_lambda")


class ConfigError(ValueError):
    """A config field has a value the run cannot use; the message names the field."""


def _require(condition: bool, field: str, value, why: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field} = {value!r}: {why}")


def _manifest_feature_dims(split_dir: pathlib.Path) -> dict[str, int]:
    """feature_dim of every shard set under a split folder, keyed by manifest path ({} when none)."""
    try:
        set_dirs = shards.find_shard_sets(split_dir)
    except shards.ShardError:
        return {}
    return {str(d / shards.MANIFEST): int(shards.load_manifest(d)["feature_dim"]) for d in set_dirs}


def check_training_config(config: ml_collections.ConfigDict, data_dir: pathlib.Path | None = None) -> None:
    """Raises ConfigError for a config that cannot train; cheap (reads only manifests)."""
    weights = config.loss.weights
    for name in LOSS_WEIGHTS_NONNEGATIVE:
        _require(weights[name] >= 0, f"loss.weights.{name}", weights[name], "must be >= 0")
    _require(weights.tau > 0, "loss.weights.tau", weights.tau, "the softmax temperature must be > 0")
    for name in ("a_slots", "n_slots"):
        value = config.model[name]
        _require(isinstance(value, int) and value > 0, f"model.{name}", value,
                 "a memory bank needs at least one slot")
    _require(config.data.segments > 0, "data.segments", config.data.segments, "must be > 0")
    _require(config.train.steps > 0, "train.steps", config.train.steps, "must be > 0")
    k = config.train.steps_per_dispatch
    _require(k > 0 and config.train.steps % k == 0, "train.steps", config.train.steps,
             f"must be a multiple of train.steps_per_dispatch = {k}")
    _require(config.optim.learning_rate > 0, "optim.learning_rate", config.optim.learning_rate, "must be > 0")
    _require(config.optim.weight_decay >= 0, "optim.weight_decay", config.optim.weight_decay, "must be >= 0")
    batch = config.data.batch
    _require(batch.normal > 0 and batch.normal == batch.abnormal, "data.batch",
             dict(batch), "UR-DMU splits the batch in halves: normal == abnormal > 0")
    _require(batch.pseudo_normal >= 0, "data.batch.pseudo_normal", batch.pseudo_normal, "must be >= 0")
    if config.loss.darm.domain_alignment:
        _require(batch.pseudo_normal > 0, "data.batch.pseudo_normal", batch.pseudo_normal,
                 "domain alignment (loss.darm.domain_alignment) needs pseudo-normal videos in the batch")
    if data_dir is None:
        return
    for split in (config.data.train_split, config.data.test_split):
        split_dir = data_dir / split
        _require(split_dir.is_dir(), "data.dir", str(data_dir), f"no folder {split_dir}")
        dims = _manifest_feature_dims(split_dir)
        _require(bool(dims), "data.dir", str(data_dir), f"no manifest.json under {split_dir}")
        for manifest, dim in dims.items():
            _require(dim == config.model.feature_dim, "model.feature_dim", config.model.feature_dim,
                     f"the shards in {manifest} have feature_dim {dim}")
