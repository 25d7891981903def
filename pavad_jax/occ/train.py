"""Training of A^s, A^t (eqs. 4 and 5) and D (section 4.1b), data-parallel on a device mesh.

Each model is trained by the same loop (`fit`): a pure train step jitted once with its state
donated, batches sharded along the mesh axis "data", randomness from fold_in(key, step), and an
Orbax checkpoint every few epochs holding model and optimiser state, so rerunning the same
workdir resumes where the last run stopped (batch order depends only on seed and epoch).
"""
from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from pavad_jax.occ import data as occ_data
from pavad_jax.occ import models

MODEL_NAMES = ("spatial", "temporal", "disc")


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices, axis 'data'."""
    return Mesh(np.array(jax.devices()), ("data",))


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


def make_ae_step(graphdef, tx: optax.GradientTransformation, p_pseudo: float, to_input: Callable) -> Callable:
    """The A^s / A^t step: with probability p_pseudo a clip's input is its pseudo-anomaly; the target stays normal."""

    def step(state: dict, normal: jax.Array, pseudo: jax.Array, key: jax.Array):
        target, pseudo = to_input(normal), to_input(pseudo)
        use_pseudo = jax.random.bernoulli(jax.random.fold_in(key, state["step"]), p_pseudo, (target.shape[0],))
        inputs = jnp.where(use_pseudo[:, None, None, None, None], pseudo, target)

        def loss_fn(params, rest):
            # copy: fresh Variables at this trace level, so BatchNorm may update its statistics
            model = nnx.merge(graphdef, params, rest, copy=True)
            loss = jnp.mean(models.reconstruction_mse(model(inputs), target))
            return loss, nnx.split(model, nnx.Param, ...)[2]

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["rest"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = dict(params=optax.apply_updates(state["params"], updates), rest=rest,
                         opt_state=opt_state, step=state["step"] + 1)
        return new_state, {"loss": loss, "pseudo_fraction": jnp.mean(use_pseudo.astype(jnp.float32))}

    return jax.jit(step, donate_argnums=0)


def make_disc_step(graphdef, tx: optax.GradientTransformation) -> Callable:
    """The D step: binary cross-entropy, normal frames 0 and spatial pseudo-anomalies 1."""

    def step(state: dict, features: jax.Array, labels: jax.Array, key: jax.Array):
        del key  # D has no randomness; the signature matches the autoencoder step

        def loss_fn(params, rest):
            logits = nnx.merge(graphdef, params, rest, copy=True)(features)
            loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
            return loss, jnp.mean((logits > 0) == (labels > 0.5))

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["rest"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = dict(params=optax.apply_updates(state["params"], updates), rest=state["rest"],
                         opt_state=opt_state, step=state["step"] + 1)
        return new_state, {"loss": loss, "accuracy": accuracy}

    return jax.jit(step, donate_argnums=0)


def checkpoint_manager(directory: pathlib.Path) -> ocp.CheckpointManager:
    """Synchronous Orbax manager keeping the last two checkpoints."""
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _save(manager: ocp.CheckpointManager, state: dict, epoch: int) -> None:
    """Model (params + batch stats) and optimiser state as separate items, so eval reads only the model."""
    manager.save(int(state["step"]), args=ocp.args.Composite(
        model=ocp.args.StandardSave({"params": state["params"], "rest": state["rest"]}),
        opt_state=ocp.args.StandardSave(state["opt_state"]),
        progress=ocp.args.JsonSave({"epoch": epoch, "step": int(state["step"])})), force=True)
    manager.wait_until_finished()


def _abstract(tree):
    """ShapeDtypeStructs (with shardings) of a pytree, the target Orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_model(directory: pathlib.Path, model: nnx.Module) -> nnx.Module:
    """model with the params and batch statistics of the latest checkpoint in directory."""
    manager = checkpoint_manager(directory)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{directory}: no checkpoint; train this model first (pavad-occ train)")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    restored = manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract({"params": params, "rest": rest}))))
    return nnx.merge(graphdef, restored["model"]["params"], restored["model"]["rest"])


def _resume(manager: ocp.CheckpointManager, state: dict, sharding: NamedSharding) -> tuple[dict, int]:
    """(state, epochs done) from the latest checkpoint, or (state, 0) when there is none."""
    if manager.latest_step() is None:
        return state, 0
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract({"params": state["params"], "rest": state["rest"]})),
        opt_state=ocp.args.StandardRestore(_abstract(state["opt_state"])),
        progress=ocp.args.JsonRestore()))
    step = jax.device_put(jnp.int32(restored["progress"]["step"]), sharding)
    return dict(restored["model"], opt_state=restored["opt_state"], step=step), restored["progress"]["epoch"]


def fit(name: str, model: nnx.Module, tx: optax.GradientTransformation, make_step: Callable,
        arrays: tuple[np.ndarray, ...], epochs: int, batch_size: int, seed: int, workdir: pathlib.Path,
        checkpoint_every: int, mesh: Mesh | None = None) -> dict:
    """Trains model (in place) on rows of `arrays` (indexed together); resumes from workdir/checkpoints/name.

    make_step(graphdef) -> jitted step(state, *batch, key) -> (state, metrics). Returns a summary.
    """
    mesh = mesh or make_mesh()
    if batch_size % mesh.size:
        raise ValueError(f"config.{name}.batch_size = {batch_size} must be divisible by the {mesh.size} devices")
    replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = jax.device_put(dict(params=params, rest=rest, opt_state=tx.init(params),
                                step=jnp.zeros((), jnp.int32)), replicated)
    manager = checkpoint_manager(workdir / "checkpoints" / name)
    state, first_epoch = _resume(manager, state, replicated)
    step_fn = make_step(graphdef)
    key = jax.random.key(seed)
    num_items = len(arrays[0])
    per_epoch = occ_data.steps_per_epoch(num_items, batch_size)
    log_path = workdir / "metrics.jsonl"
    began, losses = time.time(), []
    bar = tqdm(total=epochs * per_epoch, initial=first_epoch * per_epoch, desc=f"train {name}", unit="step")
    with open(log_path, "a") as log:
        for epoch in range(first_epoch, epochs):
            epoch_losses = []
            for index in occ_data.epoch_order(num_items, batch_size, seed, epoch):
                batch = [jax.device_put(np.asarray(a[np.sort(index)]), batched) for a in arrays]
                state, metrics = step_fn(state, *batch, key)
                epoch_losses.append(metrics)
                bar.update()
            metrics = {k: float(np.mean([m[k] for m in epoch_losses])) for k in epoch_losses[0]}
            losses.append(metrics["loss"])
            bar.set_postfix(loss=f"{metrics['loss']:.4g}")
            log.write(json.dumps({"model": name, "epoch": epoch + 1, "step": int(state["step"]), **metrics}) + "\n")
            log.flush()
            if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs:
                _save(manager, state, epoch + 1)
    bar.close()
    nnx.update(model, state["params"], state["rest"])  # the caller's model now holds the trained weights
    return {"epochs": epochs, "resumed_from_epoch": first_epoch, "steps": int(state["step"]),
            "first_epoch_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "wall_s": round(time.time() - began, 2), "compilations": step_fn._cache_size()}


def train_autoencoder(config: ml_collections.ConfigDict, kind: str, train: occ_data.TrainData,
                      workdir: pathlib.Path, mesh: Mesh | None = None) -> dict:
    """Trains A^s on (clips, spatial_pa) or A^t on (flows, temporal_pa) with Adam."""
    section = config[kind]
    if kind == "spatial":
        arrays, to_input = (train.clips, train.spatial_pa), frames_to_input
    else:
        arrays = (train.flows, train.temporal_pa)
        to_input = functools.partial(flows_to_input, flow_scale=config.data.flow_scale)
    tx = optax.adam(section.lr)
    model = build_autoencoder(config, kind, config.seed)
    return fit(kind, model, tx, lambda g: make_ae_step(g, tx, section.p_pseudo, to_input), arrays,
               section.epochs, section.batch_size, config.seed, workdir, config.checkpoint_every_epochs, mesh)


def train_discriminator(config: ml_collections.ConfigDict, data_dir: pathlib.Path, workdir: pathlib.Path,
                        mesh: Mesh | None = None) -> dict:
    """Trains D with SGD (lr 0.02, momentum 0.9, weight decay 1e-3 in the paper) on CLIP frame features."""
    features, labels = occ_data.frame_features(data_dir / "train" / "clip_shards")
    section = config.disc
    tx = optax.chain(optax.add_decayed_weights(section.weight_decay), optax.sgd(section.lr, section.momentum))
    model = build_discriminator(config, features.shape[1], config.seed)
    return fit("disc", model, tx, lambda g: make_disc_step(g, tx), (features, labels), section.epochs,
               section.batch_size, config.seed, workdir, config.checkpoint_every_epochs, mesh)


def train_all(config: ml_collections.ConfigDict, workdir: pathlib.Path, data_dir: pathlib.Path) -> dict:
    """Trains the three models one after the other; returns a summary per model."""
    train = occ_data.load_train(data_dir)
    mesh = make_mesh()
    summary = {"spatial": train_autoencoder(config, "spatial", train, workdir, mesh),
               "temporal": train_autoencoder(config, "temporal", train, workdir, mesh)}
    if config.score.eta[2] > 0:
        summary["disc"] = train_discriminator(config, data_dir, workdir, mesh)
    return summary
