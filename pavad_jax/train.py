"""pavad-train: trains the detector data-parallel over a device mesh; resumable.

  pavad-train --config configs/synthetic.py --workdir runs/synthetic
  pavad-train --config configs/synthetic.py:runlocal --workdir /tmp/run --config.train.steps=20

Rerunning the same command with the same --workdir resumes from the last checkpoint (model,
optimiser and data-iterator state), so a killed run ends with the same parameters as an
uninterrupted one. Multi-host: pass --coordinator_address/--num_processes/--process_id, or
run under a multi-host TPU slice or a Slurm job and they are detected (see launch/).
"""
from __future__ import annotations

import hashlib
import logging
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from pavad_jax import atomic, checkpoint, distributed, evaluate
from pavad_jax.config_checks import ConfigError, check_training_config
from pavad_jax.data import pipeline
from pavad_jax.losses import compute_loss, default_loss_weights
from pavad_jax.models.detector import build_detector


# ---------------------------------------------------------------------------------------------
# Pieces shared with pavad-sweep and pavad-bench.

def pytorch_adam(learning_rate, weight_decay, b1=0.9, b2=0.999, eps=1e-8) -> optax.GradientTransformation:
    """Adam as torch.optim.Adam: weight decay is added to the gradient (coupled), not decoupled."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimiser with learning rate and weight decay as state, so a sweep can trace them."""
    return optax.inject_hyperparams(pytorch_adam)(
        learning_rate=optim.learning_rate, weight_decay=optim.weight_decay,
        b1=optim.b1, b2=optim.b2, eps=optim.eps)


def split_model(detector: nnx.Module):
    """(graphdef, trainable params, everything else) of an NNX module."""
    return nnx.split(detector, nnx.Param, ...)


def params_sha256(params) -> str:
    """SHA-256 over every parameter's path, dtype, shape and bytes, in sorted path order."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    digest = hashlib.sha256()
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        value = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def stream_row_permutation(batch_counts: dict[str, int], process_count: int) -> np.ndarray | None:
    """Gather indices that turn host-major rows into stream-major rows.

    Each host contributes its slice of every stream ([normal, abnormal, pseudo-normal] per
    host), and the global array concatenates hosts; UR-DMU needs all normal rows first.
    """
    if process_count == 1:
        return None
    counts = [batch_counts[s] for s in ("normal", "abnormal", "pseudo_normal")]
    local = [c // process_count for c in counts]
    per_host = sum(local)
    order = []
    for stream, n in enumerate(local):
        start = sum(local[:stream])
        for host in range(process_count):
            order.extend(host * per_host + start + r for r in range(n))
    return np.asarray(order, np.int32)


def make_update(graphdef, tx, config, *, row_permutation=None, batch_sharding=None):
    """One optimiser update as a pure function, the unit that pavad-train scans and pavad-sweep vmaps.

    update(params, rest, opt_state, step, base_key, batch, weights, sampler)
        -> (params, opt_state), terms
    `rest` is the non-trainable model state (e.g. slot masks), `base_key` the run's seed key,
    `weights` the traced loss weights. Either `batch` is given (streamed data) or `sampler`
    draws it inside the step (device-resident data). Randomness is fold_in(base_key, step), so
    a resumed run, or a sweep member with the same seed, draws the same numbers.
    """

    def update(params, rest, opt_state, step, base_key, batch, weights, sampler):
        key = jax.random.fold_in(base_key, step)
        if sampler is not None:
            batch = sampler.sample(jax.random.fold_in(key, 1))
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        elif row_permutation is not None:
            batch = jax.tree.map(lambda x: x[row_permutation], batch)

        def loss_fn(p):
            return compute_loss(nnx.merge(graphdef, p, rest), batch, weights, jax.random.fold_in(key, 0),
                                config=config)

        (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), terms

    return update


def make_train_step(graphdef, rest, tx, config, *, row_permutation=None, batch_sharding=None):
    """`train.steps_per_dispatch` updates in one lax.scan: train_step(state, batches, weights, sampler).

    state = {"step", "params", "opt_state"}; `batches` holds k stacked batches, or is None when
    `sampler` draws them on the device. Per-step loss terms come back stacked (k,).
    """
    update = make_update(graphdef, tx, config, row_permutation=row_permutation, batch_sharding=batch_sharding)
    base_key = jax.random.key(config.train.seed)

    def train_step(state, batches, weights, sampler=None):
        def body(carry, batch):
            params, opt_state, step = carry
            (params, opt_state), terms = update(params, rest, opt_state, step, base_key, batch, weights, sampler)
            return (params, opt_state, step + 1), terms

        carry = (state["params"], state["opt_state"], state["step"])
        (params, opt_state, step), terms = jax.lax.scan(body, carry, batches, length=config.train.steps_per_dispatch)
        return {"step": step, "params": params, "opt_state": opt_state}, terms

    return train_step


# ---------------------------------------------------------------------------------------------
# Data.

def resolve_data_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    """The dataset folder: config.data.dir, or the embedded synthetic benchmark built on first use."""
    if config.data.synthetic:
        from pavad_jax.data import synthetic

        root = pathlib.Path(config.data.synthetic_root).expanduser()
        if jax.process_index() == 0:  # one writer; the other hosts wait for it
            synthetic.ensure_synthetic(root, size=config.data.synthetic)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("synthetic data ready")
        return synthetic.dataset_dir(root, size=config.data.synthetic)
    if not config.data.dir:
        raise ConfigError("config.data.dir is empty: give a dataset folder (with train/ and test/) "
                          "or set config.data.synthetic")
    path = pathlib.Path(config.data.dir).expanduser()
    if not path.is_dir():
        raise ConfigError(f"config.data.dir = {config.data.dir!r}: no such folder")
    return path


class TrainData:
    """Training batches for the mesh: sampled on the device, or streamed from grain."""

    def __init__(self, config, mesh):
        self.steps = config.train.steps_per_dispatch
        self.batch_sharding = distributed.batch_sharded(mesh)
        self.stacked_sharding = NamedSharding(mesh, P(None, distributed.DATA_AXIS))
        shards = pipeline.open_split(config.data, config.data.train_split)
        self.sampler = self.iterator = None
        if pipeline.use_device_resident(config.data, shards):
            self.sampler = pipeline.DeviceResidentSampler.from_config(
                config.data, sharding=distributed.replicated(mesh), shards=shards)
        else:
            self.iterator = pipeline.make_train_iterator(
                config.data, process_index=jax.process_index(), process_count=jax.process_count(),
                shards=shards)

    def next(self):
        """The next `steps` batches stacked (k, B, ...) as global arrays, or None when sampled on device."""
        if self.iterator is None:
            return None
        local = [next(self.iterator) for _ in range(self.steps)]
        stacked = {k: np.stack([b[k] for b in local]) for k in local[0]}
        return {k: jax.make_array_from_process_local_data(self.stacked_sharding, v)
                for k, v in stacked.items()}


# ---------------------------------------------------------------------------------------------
# Checkpoints.

def make_checkpoint_manager(workdir: pathlib.Path, config) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.train.keep_checkpoints, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


def save_checkpoint(manager, state, data: TrainData, progress: dict) -> None:
    import grain

    items = {"state": ocp.args.StandardSave(state), "progress": ocp.args.JsonSave(progress)}
    if data.iterator is not None:
        items["iterator"] = grain.checkpoint.CheckpointSave(data.iterator)
    manager.save(int(progress["step"]), args=ocp.args.Composite(**items), force=True)
    manager.wait_until_finished()


def restore_checkpoint(manager, state, data: TrainData):
    """(state, progress) from the latest checkpoint, or (state, None) for a fresh run."""
    import grain

    step = manager.latest_step()
    if step is None:
        return state, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    items = {"state": ocp.args.StandardRestore(abstract), "progress": ocp.args.JsonRestore()}
    if data.iterator is not None:
        items["iterator"] = grain.checkpoint.CheckpointRestore(data.iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored["progress"]


class PreemptionFlag:
    """Set by SIGTERM (what schedulers send before killing a job): save, then stop."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_):
        self.requested = True


# ---------------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Trains, evaluates every `train.eval_every` steps, keeps the best; returns summary.json."""
    start = time.time()
    workdir = pathlib.Path(workdir)
    data_dir = resolve_data_dir(config)
    check_training_config(config, data_dir)
    config = config.copy_and_resolve_references()
    config.data.dir = str(data_dir)  # the pipelines read data.dir
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    mesh = distributed.make_mesh(config.train.num_devices or None)
    global_batch = sum(config.data.batch.values())
    if global_batch % mesh.size:
        raise ConfigError(f"config.data.batch = {dict(config.data.batch)}: the global batch {global_batch} "
                          f"must divide evenly over the mesh's {mesh.size} devices (or set train.num_devices)")

    detector = build_detector(config.model, config.loss, seed=config.train.seed)
    graphdef, params, rest = split_model(detector)
    tx = make_optimizer(config.optim)
    replicated = distributed.replicated(mesh)
    rest = jax.device_put(rest, replicated)  # global arrays: multi-host checkpoints cannot save host-local ones
    state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": params,
                            "opt_state": tx.init(params)}, replicated)
    weights = jax.device_put(default_loss_weights(config), replicated)

    data = TrainData(config, mesh)
    eval_data = evaluate.EvalData.load(config.data, mesh)
    manager = make_checkpoint_manager(workdir, config)
    state, progress = restore_checkpoint(manager, state, data)
    state = jax.device_put(state, replicated)
    progress = progress or {"step": 0, "best_step": -1, "best_auc": -1.0, "best_metrics": None,
                            "train_wall_s": 0.0, "evals": []}
    step = int(progress["step"])

    train_step = jax.jit(make_train_step(
        graphdef, rest, tx, config, batch_sharding=data.batch_sharding,
        row_permutation=stream_row_permutation(dict(config.data.batch), jax.process_count())),
        donate_argnums=0)
    scorer = evaluate.make_scorer(graphdef, rest)
    from pavad_jax.metric_writers import create_writer  # imports TensorFlow: only when training

    writer = create_writer(workdir, is_main)
    preemption = PreemptionFlag()
    total, k = config.train.steps, config.train.steps_per_dispatch

    bar = tqdm(total=total, initial=step, desc="train", disable=not is_main, unit="step")
    segment_start, loop_start, first_step = time.time(), time.time(), step
    latest_auc = progress["evals"][-1]["auc"] if progress["evals"] else float("nan")
    latest_loss = float("nan")
    while step < total:
        state, terms = train_step(state, data.next(), weights, data.sampler)
        step += k
        bar.update(k)
        if step % config.train.log_every == 0 or step == total:
            last = {name: float(v[-1]) for name, v in jax.device_get(terms).items()}
            writer.write_scalars(step, {f"train/{n}": v for n, v in last.items()})
            latest_loss = last["total"]
        if step % config.train.log_every == 0 or step % config.train.eval_every == 0 or step == total:
            bar.set_postfix(loss=f"{latest_loss:.4f}", auc=f"{latest_auc:.4f}")
        if step % config.train.eval_every == 0 or step == total:
            result = evaluate.evaluate(scorer, state["params"], eval_data)
            latest_auc = result["auc"]
            writer.write_scalars(step, {f"eval/{n}": v for n, v in result.items() if np.isscalar(v)})
            progress["evals"].append({"step": step, "auc": result["auc"]})
            if result["auc"] > progress["best_auc"]:
                progress.update(best_step=step, best_auc=result["auc"], best_metrics=result)
                # Every process calls the export: orbax synchronises the hosts and the primary writes.
                checkpoint.export_model(workdir / "best", nnx.merge(graphdef, state["params"], rest), config)
        if step % config.train.checkpoint_every == 0 or step == total or preemption.requested:
            progress["step"] = step
            progress["train_wall_s"] += time.time() - segment_start
            segment_start = time.time()
            save_checkpoint(manager, state, data, progress)
            if preemption.requested and step < total:
                logging.warning("SIGTERM: saved step %d; rerun the same command to resume", step)
                bar.close()
                writer.close()
                return {"preempted_at_step": step}
    bar.close()
    steps_run, loop_s = step - first_step, time.time() - loop_start

    final_params = state["params"]
    checkpoint.export_model(workdir / "last", nnx.merge(graphdef, final_params, rest), config)
    best = progress["best_metrics"] or {}
    summary = {
        "final_step": step,
        "best_step": progress["best_step"],
        "auc": best.get("auc"),
        "ap_pr_trapezoid": best.get("ap_pr_trapezoid"),
        "average_precision": best.get("average_precision"),
        "per_class_auc": best.get("per_class_auc", {}),
        "final_auc": progress["evals"][-1]["auc"] if progress["evals"] else None,
        "wall_s": round(time.time() - start, 3),
        "train_wall_s": round(progress["train_wall_s"], 3),
        "steps_per_s": round(steps_run / loop_s, 3) if steps_run else None,
        "params_sha256": params_sha256(final_params),
        "devices": mesh.size,
        "processes": jax.process_count(),
        "data_dir": str(data_dir),
    }
    if is_main:
        atomic.write_json(workdir / "summary.json", summary, indent=2)
        print(f"AUC {summary['auc']:.4f} at step {summary['best_step']} (final step {step}); "
              f"summary in {workdir / 'summary.json'}")
    writer.close()
    return summary


def main(argv=None):
    from absl import app, flags
    from absl import logging as absl_logging

    distributed.define_run_flags(
        "Config file, e.g. configs/synthetic.py or configs/synthetic.py:runlocal; override fields with "
        "--config.field=value.",
        "Run folder: checkpoints, metrics, summary.json. Rerun to resume.", __doc__)

    def _main(_):
        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
        distributed.initialize_from_flags()
        try:
            train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
        except ConfigError as e:
            raise SystemExit(f"pavad-train: {e}") from None

    app.run(_main, argv=argv)


if __name__ == "__main__":
    main()
