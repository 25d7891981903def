"""Training of A^s, A^t (eqs. 4 and 5) and D (section 4.1b) through the one engine (pavad_jax/engine.py).

Each model is one engine run under WORKDIR/models/<name>/: its loss function below, batches
drawn epoch by epoch from arrays indexed together (`EpochBatches`: the order depends only on
seed and epoch), data-parallel over the mesh's "data" axis, with the engine's loop, Orbax
checkpoints every few epochs (rerunning the same workdir resumes), finite-loss guard and
metrics.jsonl.
"""
from __future__ import annotations

import functools
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from pavad_jax import checkpoint, distributed, engine
from pavad_jax.metric_writers import JSONL, MetricsLog, read_rows
from pavad_jax.occ import data as occ_data
from pavad_jax.occ import models

MODEL_NAMES = ("spatial", "temporal", "disc")


def model_dir(workdir: pathlib.Path, name: str) -> pathlib.Path:
    """Where model `name` of a pavad-occ run keeps its checkpoints and metrics."""
    return pathlib.Path(workdir) / "models" / name


def frames_to_input(frames: jax.Array) -> jax.Array:
    """uint8 frames to float32 in [0, 1]."""
    return frames.astype(jnp.float32) / 255.0


def flows_to_input(flows: jax.Array, flow_scale: float) -> jax.Array:
    """Flows in pixels (float16) to float32 network units."""
    return flows.astype(jnp.float32) * flow_scale


def build_autoencoder(config: ml_collections.ConfigDict, kind: str, seed: int) -> models.ConvAutoencoder3D:
    """A^s (kind 'spatial', frame channels) or A^t (kind 'temporal', 2 flow channels)."""
    channels = config.data.channels if kind == "spatial" else 2
    section = config[kind]
    return models.ConvAutoencoder3D(channels, tuple(section.widths), section.upsample, rngs=nnx.Rngs(seed))


def build_discriminator(config: ml_collections.ConfigDict, feature_dim: int, seed: int) -> models.Discriminator:
    """D for CLIP features of size feature_dim."""
    return models.Discriminator(feature_dim, tuple(config.disc.hidden), rngs=nnx.Rngs(seed))


def ae_loss_fn(graphdef, p_pseudo: float, to_input: Callable) -> engine.LossFn:
    """The A^s / A^t loss: with probability p_pseudo a clip's input is its pseudo-anomaly; the target stays normal."""

    def loss_fn(params, rest, batch, weights, key, step):
        target, pseudo = to_input(batch["normal"]), to_input(batch["pseudo"])
        use_pseudo = jax.random.bernoulli(key, p_pseudo, (target.shape[0],))
        inputs = jnp.where(use_pseudo[:, None, None, None, None], pseudo, target)
        # copy: fresh Variables at this trace level, so BatchNorm may update its statistics
        model = nnx.merge(graphdef, params, rest, copy=True)
        loss = jnp.mean(models.reconstruction_mse(model(inputs), target))
        terms = {"pseudo_fraction": jnp.mean(use_pseudo.astype(jnp.float32))}
        return loss, (terms, nnx.split(model, nnx.Param, ...)[2])

    return loss_fn


def disc_loss_fn(graphdef) -> engine.LossFn:
    """The D loss: binary cross-entropy, normal frames 0 and spatial pseudo-anomalies 1."""

    def loss_fn(params, rest, batch, weights, key, step):
        logits = nnx.merge(graphdef, params, rest, copy=True)(batch["features"])
        loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["labels"]))
        return loss, ({"accuracy": jnp.mean((logits > 0) == (batch["labels"] > 0.5))}, rest)

    return loss_fn


class EpochBatches:
    """Batches of rows of `arrays` (indexed together), epoch by epoch: batch s is a pure function
    of (seed, s), so a resumed run continues with the batch it would have drawn."""

    sampler = None
    iterator = None

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int, mesh, position: int = 0):
        self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
        self.num_items = len(next(iter(arrays.values())))
        self.per_epoch = occ_data.steps_per_epoch(self.num_items, batch_size)
        self.sharding = distributed.stacked_batch_sharded(mesh)
        self.position = position

    @functools.lru_cache(maxsize=4)
    def _order(self, epoch: int) -> np.ndarray:
        return occ_data.epoch_order(self.num_items, self.batch_size, self.seed, epoch)

    def next(self):
        epoch, offset = divmod(self.position, self.per_epoch)
        self.position += 1
        index = np.sort(self._order(epoch)[offset])
        # every process holds the whole arrays: its rows of the global batch are its data slice
        part, parts = distributed.data_slice(self.sharding.mesh)
        index = np.array_split(index, parts)[part]
        return distributed.put_process_local({k: a[index][None] for k, a in self.arrays.items()}, self.sharding)


def fit(name: str, model: nnx.Module, tx: optax.GradientTransformation, make_loss: Callable,
        arrays: dict[str, np.ndarray], epochs: int, batch_size: int, seed: int, workdir: pathlib.Path,
        checkpoint_every: int, mesh=None) -> dict:
    """Trains `model` (in place) on batches of `arrays`; resumes from model_dir(workdir, name).

    make_loss(graphdef) -> the engine's loss function. Returns a summary.
    """
    mesh = mesh or distributed.make_mesh(1, None)
    devices = mesh.shape[distributed.DATA_AXIS]
    if batch_size % devices:
        raise ValueError(f"config.{name}.batch_size = {batch_size} must be divisible by the {devices} devices")
    run_dir = model_dir(workdir, name)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = engine.put_state(engine.stack_members([
        {"params": params, "rest": rest, "opt_state": tx.init(params), "seed": seed, "weights": {}}]), mesh)
    data = EpochBatches(arrays, batch_size, seed, mesh)
    train_config = ml_collections.ConfigDict(dict(
        steps=epochs * data.per_epoch, steps_per_dispatch=1, log_every=1, eval_every=epochs * data.per_epoch,
        checkpoint_every=checkpoint_every * data.per_epoch))
    checkpoints = checkpoint.TrainCheckpoints(run_dir)
    state, progress = checkpoints.restore(state)
    progress = progress or engine.new_progress(1)
    data.position = first_step = int(progress["step"])
    step_fn = engine.jit_step(engine.make_step(engine.make_update(make_loss(graphdef), tx), 1, mesh=mesh), mesh)
    began = time.time()
    with MetricsLog(run_dir, jax.process_index() == 0) as log:
        loop = engine.Loop(step_fn=step_fn, data=data, schedule=engine.Schedule.from_config(train_config),
                           checkpoints=checkpoints, log=log, desc=f"train {name}", is_main=jax.process_index() == 0)
        try:
            state, progress, _ = loop.run(state, progress)
        finally:
            checkpoints.close()
    nnx.update(model, *(engine.member_tree(tree, 0) for tree in (state.params, state.rest)))
    losses = [row["train/total"] for row in read_rows(run_dir / JSONL) if "train/total" in row]
    per_epoch = [float(np.mean(losses[i:i + data.per_epoch])) for i in range(0, len(losses), data.per_epoch)]
    return {"epochs": epochs, "resumed_from_epoch": first_step // data.per_epoch, "steps": int(progress["step"]),
            "first_epoch_loss": per_epoch[0] if per_epoch else None,
            "final_loss": per_epoch[-1] if per_epoch else None,
            "wall_s": round(time.time() - began, 2), "compilations": step_fn._cache_size()}


def restore_model(run_dir: pathlib.Path, model: nnx.Module) -> nnx.Module:
    """model with the params and batch statistics of the latest checkpoint in run_dir (see model_dir)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    stacked = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype), tree)
    checkpoints = checkpoint.TrainCheckpoints(run_dir)
    try:
        step = checkpoints.latest_step()
        if step is None:
            raise FileNotFoundError(f"{run_dir}: no checkpoint; train this model first (pavad-occ train)")
        restored = checkpoints.restore_fields(step, {"params": stacked(params), "rest": stacked(rest)})
    finally:
        checkpoints.close()
    return nnx.merge(graphdef, *(jax.tree.map(lambda x: np.asarray(x)[0], restored[k]) for k in ("params", "rest")))


def train_autoencoder(config: ml_collections.ConfigDict, kind: str, train: occ_data.TrainData,
                      workdir: pathlib.Path, mesh=None) -> dict:
    """Trains A^s on (clips, spatial_pa) or A^t on (flows, temporal_pa) with Adam."""
    section = config[kind]
    if kind == "spatial":
        arrays, to_input = {"normal": train.clips, "pseudo": train.spatial_pa}, frames_to_input
    else:
        arrays = {"normal": train.flows, "pseudo": train.temporal_pa}
        to_input = functools.partial(flows_to_input, flow_scale=config.data.flow_scale)
    tx = optax.adam(section.lr)
    model = build_autoencoder(config, kind, config.seed)
    return fit(kind, model, tx, lambda g: ae_loss_fn(g, section.p_pseudo, to_input), arrays,
               section.epochs, section.batch_size, config.seed, workdir, config.checkpoint_every_epochs, mesh)


def train_discriminator(config: ml_collections.ConfigDict, data_dir: pathlib.Path, workdir: pathlib.Path,
                        mesh=None) -> dict:
    """Trains D with SGD (lr 0.02, momentum 0.9, weight decay 1e-3 in the paper) on CLIP frame features."""
    features, labels = occ_data.frame_features(data_dir / "train" / "clip_shards")
    section = config.disc
    tx = optax.chain(optax.add_decayed_weights(section.weight_decay), optax.sgd(section.lr, section.momentum))
    model = build_discriminator(config, features.shape[1], config.seed)
    return fit("disc", model, tx, disc_loss_fn, {"features": features, "labels": labels}, section.epochs,
               section.batch_size, config.seed, workdir, config.checkpoint_every_epochs, mesh)


def train_all(config: ml_collections.ConfigDict, workdir: pathlib.Path, data_dir: pathlib.Path) -> dict:
    """Trains the three models one after the other; returns a summary per model."""
    train = occ_data.load_train(data_dir)
    mesh = distributed.make_mesh(1, None)
    summary = {"spatial": train_autoencoder(config, "spatial", train, workdir, mesh),
               "temporal": train_autoencoder(config, "temporal", train, workdir, mesh)}
    if config.score.eta[2] > 0:
        summary["disc"] = train_discriminator(config, data_dir, workdir, mesh)
    return summary
