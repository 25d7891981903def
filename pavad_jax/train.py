"""pavad-train: trains the detector data-parallel over a device mesh; resumable.

  pavad-train --config configs/synthetic.py --workdir runs/synthetic
  pavad-train --config configs/synthetic.py:runlocal --workdir /tmp/run --config.train.steps=20

Rerunning the same command with the same --workdir resumes from the last checkpoint (model,
optimiser and data-iterator state), so a killed run ends with the same parameters as an
uninterrupted one. SIGTERM (sent by schedulers before the time limit) to any process makes
every process save the same step and exit. A loss or gradient that goes non-finite stops the
run with an error naming the step and the terms; the last checkpoint stays the last good one.
Multi-host: pass --coordinator_address/--num_processes/--process_id, or run under a multi-host
TPU slice or a Slurm job and they are detected (see launch/).

This module is the detector's side of the one engine (pavad_jax/engine.py): `train_members`
trains any number of members in one program, and pavad-train is its one-member case.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from pavad_jax import atomic, checkpoint, distributed, engine, host_memory, metric_writers, plots
from pavad_jax.config_base import SELECT_BY
from pavad_jax.config_checks import check_training_config, features_provenance
from pavad_jax.config_loader import ConfigError, load_config, split_config_args
from pavad_jax.data import pipeline
from pavad_jax.evaluate import Evaluator
from pavad_jax.losses import compute_loss, default_loss_weights
from pavad_jax.models import registry
from pavad_jax.models.detector import build_detector, set_active_slots  # noqa: F401 (tests build UR-DMU templates)

SUMMARY = "summary.json"
LOSS_TERMS_PNG = "loss_terms.png"  # every logged training term against step


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


class DetectorData:
    """Training batches for a (members, data) mesh, shared by every member.

    Device-resident (`sampler`: the resampled table on every device, batch `step` drawn inside
    the program) or streamed from grain (`iterator`: this process's rows, see
    distributed.data_slice). Both give the same batches, which depend on data.seed only
    (data.sample_unit, docs/data.md): device residency is a speed choice, not a change of results.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh, shards):
        self.steps = int(config.train.steps_per_dispatch)
        self.stacked_sharding = distributed.stacked_batch_sharded(mesh)
        index, count = distributed.data_slice(mesh)
        self.row_permutation = stream_row_permutation(dict(config.data.batch), count)
        self.sampler = self.iterator = None
        fields = registry.extra_fields(config)  # per-segment fields the detector reads (LAP's captions)
        try:
            if pipeline.use_device_resident(config.data, shards):
                self.sampler = pipeline.DeviceResidentSampler.from_config(
                    config.data, sharding=distributed.replicated(mesh), shards=shards, fields=fields)
            else:
                self.iterator = pipeline.make_train_iterator(config.data, process_index=index, process_count=count,
                                                             shards=shards, fields=fields)
        except ValueError as e:  # a stream the data cannot fill (source filters, abnormal_clips)
            raise ConfigError(str(e)) from None

    def next(self):
        """The next `steps` batches stacked (k, B, ...) as global arrays, or None when sampled on device."""
        if self.iterator is None:
            return None
        local = [next(self.iterator) for _ in range(self.steps)]
        stacked = {k: np.stack([b[k] for b in local]) for k in local[0]}
        return distributed.put_process_local(stacked, self.stacked_sharding)


# ---------------------------------------------------------------------------------------------
# Members.

def has_slots(config: ml_collections.ConfigDict) -> bool:
    """Whether the detector has memory slots that sweep members may size differently (UR-DMU)."""
    return registry.model_name(config) == "urdmu"


def padded_template(config: ml_collections.ConfigDict, a_slots: int | None = None, n_slots: int | None = None):
    """A detector with the group's padded slot counts: its graphdef and shapes are every member's."""
    config = config.copy_and_resolve_references()
    if has_slots(config):
        config.model.a_slots, config.model.n_slots = a_slots, n_slots
    return registry.build(config, seed=0)


def _pad_leaf(leaf, shape) -> np.ndarray:
    """Zero-pad an array at the end of every axis to `shape` (a bigger memory bank)."""
    leaf = np.asarray(leaf)
    if leaf.shape == tuple(shape):
        return leaf
    return np.pad(leaf, [(0, s - n) for n, s in zip(leaf.shape, shape)])


def init_member(config: ml_collections.ConfigDict, template) -> dict:
    """One member's initial params, rest, opt_state, seed and weights, padded to the template's slots.

    The parameters are drawn exactly as a standalone run of `config` draws them; padded memory
    rows are zero (masked out, they get zero gradient and zero weight decay, so they stay zero).
    """
    _, params, rest = nnx.split(registry.build(config, seed=int(config.train.seed)), nnx.Param, ...)
    if has_slots(config):
        set_active_slots(template, int(config.model.a_slots), int(config.model.n_slots))
        rest = nnx.split(template, nnx.Param, ...)[2]
    template_params = nnx.split(template, nnx.Param, ...)[1]
    params = jax.tree.map(lambda p, t: _pad_leaf(p, t.shape), params, template_params)
    return {"params": params, "rest": jax.tree.map(np.asarray, rest),
            "opt_state": engine.make_optimizer(config.optim).init(params), "seed": int(config.train.seed),
            "weights": default_loss_weights(config)}


def member_detector(host_params, member: int, config: ml_collections.ConfigDict, host_rest=None, template=None):
    """Member `member` of stacked host params (and its model state: BatchNorm statistics, when
    `host_rest` is given) as a standalone detector at its own slot counts. `template`: the
    (graphdef, params, rest) split of a detector built from `config` (default: built here)."""
    graphdef, own_params, rest = template or nnx.split(registry.build(config, seed=0), nnx.Param, ...)
    params = jax.tree.map(lambda p, own: np.asarray(p)[member][tuple(slice(0, n) for n in own.shape)],
                          host_params, own_params)
    if host_rest is not None and not has_slots(config):  # UR-DMU's rest is its slot masks: its own config's
        rest = jax.tree.map(lambda r: np.asarray(r)[member], host_rest)
    return nnx.merge(graphdef, params, rest)


def detector_loss_fn(graphdef, config: ml_collections.ConfigDict) -> engine.LossFn:
    """The engine's loss function for the detector of config.model.name (registry.loss).

    RTFM and LAP update their BatchNorm statistics in place: the model is merged with copy=True
    inside the differentiated function and its new non-trainable state is returned.
    """
    if registry.model_name(config) == "urdmu":
        def loss_fn(params, rest, batch, weights, key, step):  # UR-DMU's loss has no schedule
            total, terms = compute_loss(nnx.merge(graphdef, params, rest), batch, weights, key, config=config)
            return total, (terms, rest)

        return loss_fn

    def loss_fn(params, rest, batch, weights, key, step):
        model = nnx.merge(graphdef, params, rest, copy=True)
        total, terms = registry.loss(model, batch, weights, key, config, step)
        return total, (terms, nnx.split(model, nnx.Param, ...)[2])

    return loss_fn


_COMPILED: dict = {}


def compiled_step(graphdef, config: ml_collections.ConfigDict, data: DetectorData, mesh):
    """The jitted step (state donated), once per structure and mesh in a process, so sweep groups
    and reruns of the same structure reuse the compiled program."""
    static = {"loss": config.loss.to_dict(), "batch": config.data.batch.to_dict(),
              "k": config.train.steps_per_dispatch, "adam": [config.optim.b1, config.optim.b2, config.optim.eps],
              "resident": data.sampler is not None,
              "rows": None if data.row_permutation is None else data.row_permutation.tolist()}
    key = (graphdef, json.dumps(static, sort_keys=True, default=str), mesh)
    if key not in _COMPILED:
        update = engine.make_update(detector_loss_fn(graphdef, config), engine.make_optimizer(config.optim))
        step = engine.make_step(update, int(config.train.steps_per_dispatch), mesh=mesh,
                                row_permutation=data.row_permutation)
        _COMPILED[key] = engine.jit_step(step, mesh)
    return _COMPILED[key]


@dataclasses.dataclass
class MemberResult:
    """What one member's training gave (a row of sweep_results.csv, pavad-train's summary)."""

    best_step: int
    best: dict | None
    final: dict | None
    diverged_at: int | None
    diverged_terms: list[str] | None
    params_sha256: str
    evals: list[dict]


def scheduled_hyperparameters(schedule, step: int) -> dict[str, float]:
    """The traced hyperparameters train.hyper_schedule sets for updates from `step` on (merged up to it)."""
    values = {}
    for entry in schedule:
        if int(entry["step"]) <= step:
            values |= {k: float(v) for k, v in entry.items() if k != "step"}
    return values


def apply_hyper_schedule(schedule):
    """after_dispatch hook (and start) that sets every member's scheduled hyperparameters where an
    entry of train.hyper_schedule begins."""
    starts = {int(entry["step"]) for entry in schedule}

    def apply(state, step, progress=None):
        if step not in starts:
            return state
        values = scheduled_hyperparameters(schedule, step)
        return engine.set_hyperparameters(state, {k: np.full(state.members, v, np.float32) for k, v in values.items()})

    return apply


def train_members(structure: ml_collections.ConfigDict, member_configs: list[ml_collections.ConfigDict],
                  run_dir: pathlib.Path, data_dir: pathlib.Path, *, export_dirs: list[pathlib.Path | None],
                  member_ids: list[int] | None = None, mesh=None, desc: str = "train",
                  start: tuple[engine.TrainState, dict] | None = None, after_dispatch=None,
                  copies: bool = False) -> tuple[list[MemberResult], str, dict]:
    """Trains the members (one program, vmapped) to config.train.steps, resuming from run_dir.

    `structure` holds everything the members share (model shapes up to slot counts, loss
    structure, data, schedule); `member_configs` are the standalone configs of the members,
    whose traced values (seed, loss weights, learning rate, weight decay, slot counts) may
    differ. Member m exports best/ and last/ under export_dirs[m] (None: not exported).
    Returns (results, status, progress) with status "finished", "preempted" or "diverged".

    start: (host state, progress) to continue from instead of the members' initialisation (a
    successive-halving rung); a checkpoint in run_dir still wins (a resumed rung).
    after_dispatch: the Loop's hook (PBT); config.train.hyper_schedule, if any, is applied too.
    copies: the members are copies of one run (train.program_members): only the first is logged.
    """
    config = structure.copy_and_resolve_references()
    config.data.dir = str(data_dir)
    schedule = engine.Schedule.from_config(config.train)
    is_main = jax.process_index() == 0
    mesh = mesh or distributed.make_mesh(1, int(config.train.num_devices) or None)
    # Padded to the structure's slot counts too: a successive-halving rung keeps its group's shapes.
    slotted = [config, *member_configs]
    template = (padded_template(config, max(int(c.model.a_slots) for c in slotted),
                                max(int(c.model.n_slots) for c in slotted))
                if has_slots(config) else padded_template(config))
    graphdef = nnx.split(template, nnx.Param, ...)[0]
    host = start[0] if start is not None else engine.stack_members([init_member(c, template) for c in member_configs])
    state = engine.put_state(host, mesh)
    shards = pipeline.open_split(config.data, config.data.train_split)
    data = DetectorData(config, mesh, shards)
    evaluator = Evaluator(config.data, mesh, graphdef, precision=config.train.eval_precision,
                          extra_fields=registry.extra_fields(config))
    checkpoints = checkpoint.TrainCheckpoints(run_dir, int(config.train.keep_checkpoints))
    state, progress = checkpoints.restore(state, data.iterator)
    progress = progress or (start[1] if start is not None else engine.new_progress(len(member_configs)))
    hyper_schedule = list(config.train.get("hyper_schedule", ()) or ())
    if hyper_schedule:  # the entry in force at the first step (idempotent on resume)
        state = engine.set_hyperparameters(state, {k: np.full(state.members, v, np.float32) for k, v in
                                                   scheduled_hyperparameters(hyper_schedule, progress["step"]).items()})
        scheduled = apply_hyper_schedule(hyper_schedule)
        hook = after_dispatch
        after_dispatch = scheduled if hook is None else (lambda s, step, p: hook(scheduled(s, step, p), step, p))

    if is_main:  # each member's folder says how it was trained (pavad-eval and pavad-detect read it)
        for directory, member_config in zip(export_dirs, member_configs):
            if directory is not None:
                resolved = member_config.copy_and_resolve_references()
                resolved.data.dir = str(data_dir)
                atomic.write_text(directory / checkpoint.RUN_CONFIG, resolved.to_json_best_effort(indent=2))

    features = features_provenance(pipeline.split_path(config.data, config.data.train_split))

    templates: dict[int, tuple] = {}  # per member, built once: an export at every new best stays cheap

    def template(member: int) -> tuple:
        if member not in templates:
            templates[member] = nnx.split(registry.build(member_configs[member], seed=0), nnx.Param, ...)
        return templates[member]

    def export(state, member: int, which: str) -> None:
        if export_dirs[member] is not None:
            detector = member_detector(jax.tree.map(distributed.gather, state.params), member, member_configs[member],
                                       jax.tree.map(distributed.gather, state.rest), template(member))
            checkpoint.export_model(export_dirs[member] / which, detector, member_configs[member], features)

    log = metric_writers.MetricsLog(run_dir, is_main)
    loop = engine.Loop(step_fn=compiled_step(graphdef, config, data, mesh), data=data, schedule=schedule,
                       checkpoints=checkpoints, log=log, evaluate=lambda s: evaluator(s.params, s.rest),
                       on_best=lambda state, member, _: export(state, member, "best"), select_by=SELECT_BY[config.train.select_by], member_ids=member_ids,
                       desc=desc, is_main=is_main, after_dispatch=after_dispatch,
                       single_run_copies=copies)
    try:
        state, progress, status = loop.run(state, progress)
    finally:
        log.close()
        checkpoints.close()
    if status != "preempted":
        for m in range(len(member_configs)):
            export(state, m, "last")
    host_params = jax.tree.map(distributed.gather, state.params)
    results = []
    for m, entry in enumerate(progress["members"]):
        params = nnx.split(member_detector(host_params, m, member_configs[m], template=template(m)), nnx.Param, ...)[1]
        results.append(MemberResult(entry["best_step"], entry["best"], entry["final"], entry["diverged_at"],
                                    entry["diverged_terms"], engine.params_sha256(params), entry["evals"]))
    return results, status, progress


# ---------------------------------------------------------------------------------------------
# pavad-train.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Trains one detector, evaluates every train.eval_every steps, keeps the best; returns summary.json.

    Raises ConfigError for a config that cannot train (before anything compiles) and
    engine.TrainingDiverged when the loss or gradient goes non-finite.
    """
    start = time.time()
    workdir = pathlib.Path(workdir)
    data_dir = resolve_data_dir(config)
    copies = int(config.train.get("program_members", 1))
    if copies > 1:  # the program shape of the sweep this run replays
        mesh = distributed.member_mesh(copies, sum(config.data.batch.values()), int(config.train.num_devices) or None)
    else:
        mesh = distributed.make_mesh(1, int(config.train.num_devices) or None)
    check_training_config(config, data_dir, data_devices=mesh.shape[distributed.DATA_AXIS])
    config = config.copy_and_resolve_references()
    config.data.dir = str(data_dir)
    is_main = jax.process_index() == 0
    loop_start = time.time()
    results, status, progress = train_members(config, [config] * copies, workdir, data_dir,
                                              export_dirs=[workdir] + [None] * (copies - 1), mesh=mesh,
                                              copies=copies > 1)
    result = results[0]
    if status == "preempted":
        return {"preempted_at_step": progress["step"]}
    best = result.best or {}
    summary = {
        "final_step": progress["step"],
        "best_step": result.best_step,
        "select_by": config.train.select_by,
        "auc": best.get("auc"),
        "ap_pr_trapezoid": best.get("ap_pr_trapezoid"),
        "average_precision": best.get("average_precision"),
        "per_class_auc": best.get("per_class_auc", {}),
        "final_auc": (result.final or {}).get("auc"),
        "wall_s": round(time.time() - start, 3),
        "train_wall_s": round(progress["train_wall_s"], 3),
        "steps_per_s": round(progress["step"] / (time.time() - loop_start), 3),
        "params_sha256": result.params_sha256,
        "devices": mesh.size,
        "processes": jax.process_count(),
        "data_dir": str(data_dir),
    }
    if is_main:
        atomic.write_json(workdir / SUMMARY, summary, indent=2)
        plots.plot_loss_terms(workdir / metric_writers.JSONL, workdir / LOSS_TERMS_PNG)  # curves, not JSON lines
        chosen = "" if config.train.select_by == "auc" else (
            f"{SELECT_BY[config.train.select_by]} {best.get(SELECT_BY[config.train.select_by], float('nan')):.4f}, ")
        print(f"best checkpoint: {chosen}AUC {summary['auc']:.4f} at step {summary['best_step']} "
              f"(final step {summary['final_step']}); summary in {workdir / SUMMARY}")
    return summary


def build_parser(prog: str, doc: str, config_help: str, workdir_help: str) -> argparse.ArgumentParser:
    """The command line of pavad-train and pavad-sweep: --config, --workdir, --config.FIELD=VALUE, multi-host."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Override any config field with --config.FIELD=VALUE "
                                            "(e.g. --config.train.steps=20).")
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--workdir", required=True, help=workdir_help)
    distributed.add_multihost_arguments(parser)
    return parser


def parse_command_line(parser: argparse.ArgumentParser, argv, expected: str):
    """(args, config) of a command line, the config loaded with its overrides; errors exit with one line."""
    rest, overrides = split_config_args(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    try:
        config = load_config(args.config, overrides, command=parser.prog, expected=expected)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: {e}\n")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    return args, config


def seeds_sweep(config: ml_collections.ConfigDict, seeds: int) -> ml_collections.ConfigDict:
    """The sweep config of `pavad-train --seeds N`: this config over N consecutive seeds."""
    config = config.copy_and_resolve_references()
    first = int(config.train.seed)
    config.sweep = ml_collections.ConfigDict({"kind": "grid", "axes": {"seed": [first + i for i in range(seeds)]}})
    return config


def main(argv=None):
    host_memory.reuse_freed_memory()  # before JAX starts its backend
    parser = build_parser("pavad-train", __doc__,
                          "config file, e.g. configs/synthetic.py or configs/synthetic.py:runlocal",
                          "run folder: checkpoints, metrics, summary.json; rerun to resume")
    parser.add_argument("--seeds", type=int, default=0,
                        help="N > 1: a pavad-sweep of this config over N seeds (train.seed, train.seed + 1, ...): "
                             "per-seed results plus mean, std and 95%% interval of AUC and AP in sweep_results.csv")
    args, config = parse_command_line(parser, argv, "train")
    distributed.initialize_from_args(args)
    if args.seeds > 1:
        from pavad_jax import sweep  # pylint: disable=import-outside-toplevel  (sweep imports this module)

        try:
            rows = sweep.run_sweep(seeds_sweep(config, args.seeds), args.workdir)
        except ConfigError as e:
            raise SystemExit(f"pavad-train: {e}") from None
        if rows and jax.process_index() == 0:
            sweep.print_seed_statistics(rows)
        return
    try:
        train_and_evaluate(config, args.workdir)
    except ConfigError as e:
        raise SystemExit(f"pavad-train: {e}") from None
    except engine.TrainingDiverged as e:
        raise SystemExit(f"pavad-train: {e}") from None


if __name__ == "__main__":
    main()
