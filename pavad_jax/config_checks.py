"""Checks a training config once, at the entry point, before anything is compiled, naming the field."""
from __future__ import annotations

import logging
import pathlib

import ml_collections

from pavad_jax import shards
from pavad_jax.config_base import GV_MODES, MODEL_NAMES, POOL_POINTS, SELECT_BY
from pavad_jax.config_loader import ConfigError

LOSS_WEIGHTS_NONNEGATIVE = ("lambda1", "lambda2", "lambda_da", "lambda_dist", "beta", "gv_lambda")
EVAL_PRECISIONS = ("highest", "default")


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


def check_schedule(train: ml_collections.ConfigDict) -> None:
    """train.steps and every interval a positive multiple of train.steps_per_dispatch."""
    k = train.steps_per_dispatch
    _require(isinstance(k, int) and k >= 1, "train.steps_per_dispatch", k, "must be an int >= 1")
    for name in ("steps", "log_every", "eval_every", "checkpoint_every"):
        value = train[name]
        _require(isinstance(value, int) and value >= 1 and value % k == 0, f"train.{name}", value,
                 f"must be a positive multiple of train.steps_per_dispatch = {k} (an interval that is not "
                 "fires only at the least common multiple)")


def check_hyper_schedule(config: ml_collections.ConfigDict) -> None:
    """train.hyper_schedule: steps from 0, increasing, multiples of steps_per_dispatch; traced names only."""
    from pavad_jax.losses import WEIGHT_NAMES  # pylint: disable=import-outside-toplevel

    train = config.train
    schedule = list(train.get("hyper_schedule", ()) or ())
    _require(int(train.get("program_members", 1)) >= 1, "train.program_members", train.get("program_members"),
             "must be >= 1")
    if not schedule:
        return
    traced = set(WEIGHT_NAMES) | {"learning_rate", "weight_decay"}
    steps = [entry.get("step") if hasattr(entry, "get") else None for entry in schedule]
    _require(all(isinstance(s, int) for s in steps) and steps[0] == 0 and steps == sorted(set(steps)),
             "train.hyper_schedule", steps, "needs entries {'step': s, ...} with increasing int steps, the first 0")
    _require(all(s % train.steps_per_dispatch == 0 for s in steps), "train.hyper_schedule", steps,
             f"every step must be a multiple of train.steps_per_dispatch = {train.steps_per_dispatch}")
    for entry in schedule:
        unknown = sorted(set(entry) - traced - {"step"})
        _require(not unknown, "train.hyper_schedule", unknown,
                 f"not traced hyperparameters; choose from {sorted(traced)}")
        for name, value in entry.items():
            _require(name == "step" or (isinstance(value, (int, float)) and value >= 0), "train.hyper_schedule",
                     {name: value}, "values must be numbers >= 0")


def check_training_config(config: ml_collections.ConfigDict, data_dir: pathlib.Path | None = None, *,
                          data_devices: int | None = None) -> None:
    """Raises ConfigError for a config that cannot train; cheap (reads only manifests).

    data_devices: the size of the mesh's "data" axis, which the global batch must divide.
    """
    name = config.model.get("name", "urdmu")
    _require(name in MODEL_NAMES, "model.name", name, f"must be one of {MODEL_NAMES}")
    if name == "urdmu":
        _check_urdmu(config)
    else:
        _check_rtfm_family(config, name)
    _check_common(config, data_dir, data_devices)


def _check_rtfm_family(config: ml_collections.ConfigDict, name: str) -> None:
    """RTFM, LAP and TEVAD: their network, loss and SSLS fields; no DARM, no pseudo-normal rows."""
    from pavad_jax.models.defaults_rtfm import SSLS_MODES

    model, loss = config.model, config.loss
    _require(model.feature_dim % 4 == 0, "model.feature_dim", model.feature_dim,
             "RTFM's temporal network splits the features in 4 branches: a multiple of 4")
    if name != "rtfm":
        _require(model.text_dim % 4 == 0, "model.text_dim", model.text_dim, "a multiple of 4 (the caption branch)")
    _require(0 < model.topk <= config.data.segments, "model.topk", model.topk,
             f"must be in [1, data.segments = {config.data.segments}]")
    _require(loss.gv.mode in SSLS_MODES, "loss.gv.mode", loss.gv.mode, f"must be one of {SSLS_MODES}")
    for field in ("domain_alignment", "usage_update"):
        darm = loss.get("darm")
        _require(darm is None or not darm.get(field), f"loss.darm.{field}", True,
                 f"model {name!r} has no memory slots or pseudo-normal stream (DARM is wired for UR-DMU only)")
    _require(config.data.batch.get("pseudo_normal", 0) == 0, "data.batch.pseudo_normal",
             config.data.batch.get("pseudo_normal"), f"model {name!r} takes no pseudo-normal rows")
    _require(not (loss.quirks.get("score_view_32") and config.data.segments % 32), "loss.quirks.score_view_32",
             True, f"the code's view of the scores needs data.segments a multiple of 32, got {config.data.segments}")


def _check_urdmu(config: ml_collections.ConfigDict) -> None:
    weights = config.loss.weights
    for name in LOSS_WEIGHTS_NONNEGATIVE:
        _require(weights[name] >= 0, f"loss.weights.{name}", weights[name], "must be >= 0")
    _require(weights.tau > 0, "loss.weights.tau", weights.tau, "the softmax temperature must be > 0")
    _require(config.loss.darm.pool in POOL_POINTS, "loss.darm.pool", config.loss.darm.pool,
             f"must be one of {POOL_POINTS}")
    _require(config.loss.gv.mode in GV_MODES, "loss.gv.mode", config.loss.gv.mode, f"must be one of {GV_MODES}")
    _require(not config.loss.gv.learnable or config.loss.gv.mode == "sample", "loss.gv.learnable",
             config.loss.gv.learnable, "a learnable lambda needs loss.gv.mode = 'sample'")
    for name in ("a_slots", "n_slots"):
        value = config.model[name]
        _require(isinstance(value, int) and value > 0, f"model.{name}", value,
                 "a memory bank needs at least one slot")
    _require(config.model.hidden % config.model.heads == 0, "model.heads", config.model.heads,
             f"must divide model.hidden = {config.model.hidden}")
    if config.loss.darm.domain_alignment:
        _require(config.data.batch.pseudo_normal > 0, "data.batch.pseudo_normal", config.data.batch.pseudo_normal,
                 "domain alignment (loss.darm.domain_alignment) needs pseudo-normal videos in the batch")


def _check_common(config: ml_collections.ConfigDict, data_dir: pathlib.Path | None, data_devices: int | None) -> None:
    _require(config.data.segments > 0, "data.segments", config.data.segments, "must be > 0")
    check_schedule(config.train)
    _require(config.train.select_by in SELECT_BY, "train.select_by", config.train.select_by,
             f"must be one of {sorted(SELECT_BY)}")
    _require(config.train.eval_precision in EVAL_PRECISIONS, "train.eval_precision", config.train.eval_precision,
             f"must be one of {EVAL_PRECISIONS}")
    check_hyper_schedule(config)
    _require(config.optim.learning_rate > 0, "optim.learning_rate", config.optim.learning_rate, "must be > 0")
    _require(config.optim.weight_decay >= 0, "optim.weight_decay", config.optim.weight_decay, "must be >= 0")
    batch = config.data.batch
    _require(batch.normal > 0 and batch.normal == batch.abnormal, "data.batch",
             dict(batch), "UR-DMU splits the batch in halves: normal == abnormal > 0")
    _require(batch.pseudo_normal >= 0, "data.batch.pseudo_normal", batch.pseudo_normal, "must be >= 0")
    if data_devices is not None:
        rows = sum(batch.values())
        _require(rows % data_devices == 0, "data.batch", dict(batch),
                 f"the global batch of {rows} rows must divide evenly over the mesh's {data_devices} data devices "
                 "(or set train.num_devices)")
    if data_dir is None:
        return
    set_dirs = []
    for split in (config.data.train_split, config.data.test_split):
        split_dir = data_dir / split
        _require(split_dir.is_dir(), "data.dir", str(data_dir), f"no folder {split_dir}")
        dims = _manifest_feature_dims(split_dir)
        _require(bool(dims), "data.dir", str(data_dir), f"no manifest.json under {split_dir}")
        for manifest, dim in dims.items():
            _require(dim == config.model.feature_dim, "model.feature_dim", config.model.feature_dim,
                     f"the shards in {manifest} have feature_dim {dim}")
        for set_dir in shards.find_shard_sets(split_dir):  # LAP's captions: in every set, at model.text_dim
            manifest = shards.load_manifest(set_dir)
            fields = manifest.get("segment_fields") or {}
            if config.model.get("name") in ("lap", "tevad") and manifest["num_records"]:
                _require(fields.get("caption_embedding") == config.model.text_dim, "model.text_dim",
                         config.model.text_dim, f"LAP reads per-segment caption_embedding, but "
                         f"{set_dir / shards.MANIFEST} lists segment_fields {fields}")
        set_dirs += shards.find_shard_sets(split_dir)
    for warning in shards.check_provenance(set_dirs, root=data_dir):  # train and test made alike?
        logging.warning("%s", warning)


def features_provenance(split_dir: pathlib.Path) -> dict | None:
    """{"feature_extractor", "protocol"} shared by every shard set of a split; None when they differ
    or were not recorded."""
    found = {tuple(shards.manifest_provenance(shards.load_manifest(d)).items())
             for d in shards.find_shard_sets(split_dir)}
    provenance = dict(found.pop()) if len(found) == 1 else None
    return None if provenance is None or shards.UNKNOWN in provenance.values() else provenance
