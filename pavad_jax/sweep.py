"""pavad-sweep: trains many detectors at once, one vmapped program per group of members.

  pavad-sweep --config configs/sweeps/synthetic_lambda.py:runlocal --workdir /tmp/sweep
  pavad-sweep --config configs/sweeps/pavad_table5.py --workdir runs/t5 --config.data.dir=/data/sht

A sweep config is a training config (the base every member starts from) plus a `sweep` field:

  sweep.kind              "grid" (product of the axes), "list" (sweep.members) or "random"
  sweep.axes              {axis: values} for grid; {axis: (distribution, ...)} for random
  sweep.members           for list: a sequence of {axis: value} dicts
  sweep.count, .random_seed   random: how many draws, and the seed of the draws
  sweep.members_per_group     members trained together (0 = all); groups run one after another

Axes (AXES below) that are *traced* (loss weights, learning rate, weight decay, seed, slot
counts) vary inside one compiled program: params, optimiser state, slot masks, weights and
seed keys carry a leading member axis, sharded over the devices of a "members" mesh. Slot
counts are padded to the group's largest K and masked. *Structural* axes (a learnable GV-VAD
lambda, the number of pseudo-abnormal clips) change the parameter tree or the data, so every
value gets its own program. Rerunning the same command resumes: each group keeps Orbax
checkpoints of its stacked state, finished groups are not rerun. docs/sweeps.md has the details.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import json
import logging
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from pavad_jax import atomic, metrics, plots, train
from pavad_jax.config_checks import ConfigError, check_training_config
from pavad_jax.data import pipeline
from pavad_jax.losses import WEIGHT_NAMES
from pavad_jax.models.detector import build_detector, set_active_slots

MEMBER_AXIS = "members"

# Sweep axis -> config field. Traced axes share one compiled program.
TRACED_AXES = {name: f"loss.weights.{name}" for name in WEIGHT_NAMES} | {
    "learning_rate": "optim.learning_rate",
    "weight_decay": "optim.weight_decay",
    "seed": "train.seed",
    "a_slots": "model.a_slots",
    "n_slots": "model.n_slots",
}
# Structural axes: each distinct value compiles its own program.
STRUCTURAL_AXES = {
    "gv_learnable": "loss.gv.learnable",  # adds a parameter (GV-VAD's learnable lambda)
    "abnormal_clips": "data.abnormal_clips",  # pseudo-abnormal training clips kept (0 = all)
}
AXES = TRACED_AXES | STRUCTURAL_AXES
FIELD_DEFAULTS = {"abnormal_clips": 0}  # the value an axis has when the base config lacks its field
RESULTS_CSV, RESULTS_JSON, PROGRESS_JSON = "sweep_results.csv", "sweep_results.json", "sweep_progress.json"


# ---------------------------------------------------------------------------------------------
# Members: the sweep definition expanded into a list of {axis: value}.

def _check_axes(names, where: str) -> None:
    unknown = sorted(set(names) - set(AXES))
    if unknown:
        raise ConfigError(f"config.sweep.{where}: unknown axis {unknown}; choose from {sorted(AXES)}")


def _draw(rng: np.random.Generator, axis: str, spec) -> Any:
    """One random value: ("uniform"|"loguniform", low, high), ("randint", low, high) or ("choice", values)."""
    if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in ("uniform", "loguniform", "randint", "choice"):
        return spec  # a fixed value
    kind, *args = spec
    if kind == "choice":
        values = args[0]
        return values[int(rng.integers(len(values)))]
    low, high = args
    if kind == "uniform":
        return float(rng.uniform(low, high))
    if kind == "loguniform":
        if low <= 0:
            raise ConfigError(f"config.sweep.axes.{axis}: loguniform needs low > 0, got {low}")
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return int(rng.integers(low, high + 1))


def expand_members(sweep: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The members of a sweep, in order: [{axis: value}, ...]."""
    kind = sweep.get("kind", "grid")
    axes = dict(sweep.get("axes", {}) or {})
    if kind == "grid":
        _check_axes(axes, "axes")
        for name, values in axes.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"config.sweep.axes.{name}: a grid axis needs a non-empty list of values")
        names = list(axes)
        return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]
    if kind == "list":
        members = [dict(m) for m in (sweep.get("members") or [])]
        if not members:
            raise ConfigError("config.sweep.members: a list sweep needs at least one member")
        for i, m in enumerate(members):
            _check_axes(m, f"members[{i}]")
        return members
    if kind == "random":
        _check_axes(axes, "axes")
        count = int(sweep.get("count", 0))
        if count < 1:
            raise ConfigError(f"config.sweep.count = {count}: a random sweep needs count >= 1")
        rng = np.random.default_rng(int(sweep.get("random_seed", 0)))
        return [{name: _draw(rng, name, spec) for name, spec in axes.items()} for _ in range(count)]
    raise ConfigError(f"config.sweep.kind = {kind!r}: expected 'grid', 'list' or 'random'")


def _set_field(config: ml_collections.ConfigDict, path: str, value) -> None:
    """config.<path> = value; a field the base lacks (e.g. data.abnormal_clips) is added."""
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
        node = node[p]
    value = value.item() if isinstance(value, np.generic) else value
    with node.unlocked():
        node[leaf] = value


def _get_field(config: ml_collections.ConfigDict, path: str):
    node = config
    for p in path.split("."):
        node = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
    return node


def load_config_file(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """get_config(arg) of a config file: how a sweep config starts from a training config."""
    import importlib.util

    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"pavad_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def base_of(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The training config a sweep config varies (everything but `sweep`)."""
    base = copy.deepcopy(config)  # deepcopy keeps field types (copy_and_resolve_references would not)
    with base.unlocked():
        del base["sweep"]
    return base


def member_config(base: ml_collections.ConfigDict, member: dict[str, Any]) -> ml_collections.ConfigDict:
    """The standalone pavad-train config equivalent to one member."""
    config = copy.deepcopy(base)
    for axis, value in member.items():
        _set_field(config, AXES[axis], value)
    return config


# ---------------------------------------------------------------------------------------------
# Groups: members that share one compiled program.

@dataclasses.dataclass
class Group:
    """Members trained together; `padding` copies of the last member fill the mesh (discarded)."""

    index: int
    members: list[int]  # indices into the sweep's members
    padding: int
    config: ml_collections.ConfigDict  # structural config: the base with this group's structural values
    a_slots: int  # padded slot counts of every group with this structure
    n_slots: int

    @property
    def size(self) -> int:
        return len(self.members) + self.padding


def padded_group_size(members: int, device_count: int) -> int:
    """The fewest members >= `members` that spread evenly over at most `device_count` devices."""
    per_device = math.ceil(members / device_count)
    return per_device * math.ceil(members / per_device)


def plan_groups(base, members: list[dict], members_per_group: int, device_count: int) -> list[Group]:
    """Members split by structural values, then into chunks of `members_per_group`, padded to the mesh."""
    by_structure: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        key = tuple(sorted((a, json.dumps(m[a])) for a in m if a in STRUCTURAL_AXES))
        by_structure.setdefault(key, []).append(i)
    groups = []
    for key, indices in by_structure.items():
        chunk = members_per_group or len(indices)
        # Every chunk of one structure gets the same size, so the program compiles once.
        size = padded_group_size(min(chunk, len(indices)), device_count)
        structural = member_config(base, {a: json.loads(v) for a, v in key})
        configs = [member_config(base, members[i]) for i in indices]
        a_slots = max(int(c.model.a_slots) for c in configs)
        n_slots = max(int(c.model.n_slots) for c in configs)
        for start in range(0, len(indices), chunk):
            part = indices[start:start + chunk]
            groups.append(Group(len(groups), part, size - len(part), structural, a_slots, n_slots))
    return groups


def member_mesh(group_size: int) -> Mesh:
    """A 1-D "members" mesh over as many devices as divide the group evenly."""
    devices = jax.devices()
    count = max(d for d in range(1, min(len(devices), group_size) + 1) if group_size % d == 0)
    return Mesh(np.asarray(devices[:count]), (MEMBER_AXIS,))


# ---------------------------------------------------------------------------------------------
# Stacked member state.

def _pad_leaf(leaf, shape) -> np.ndarray:
    """Zero-pad an array at the end of every axis to `shape` (a bigger memory bank)."""
    leaf = np.asarray(leaf)
    if leaf.shape == tuple(shape):
        return leaf
    return np.pad(leaf, [(0, s - n) for n, s in zip(leaf.shape, shape)])


def padded_template(config, a_slots: int, n_slots: int):
    """A detector with the group's padded slot counts: its graphdef and shapes are the group's."""
    model = config.model.copy_and_resolve_references()
    model.a_slots, model.n_slots = a_slots, n_slots
    return build_detector(model, config.loss, seed=0)


def init_member(config, template):
    """(params, rest, opt_state) of one member, built at its own size, padded to the template's slots.

    The member's parameters are drawn exactly as a standalone run draws them; padded memory
    rows are zero (masked out, they get zero gradient and zero weight decay, so they stay zero).
    """
    _, params, _ = train.split_model(build_detector(config.model, config.loss, seed=int(config.train.seed)))
    set_active_slots(template, int(config.model.a_slots), int(config.model.n_slots))
    _, template_params, rest = train.split_model(template)
    params = jax.tree.map(lambda p, t: _pad_leaf(p, t.shape), params, template_params)
    opt_state = train.make_optimizer(config.optim).init(params)
    return params, jax.tree.map(np.asarray, rest), opt_state


def _stack(trees):
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _put_stacked(tree, mesh: Mesh):
    """Host numpy (M, ...) leaves -> global arrays sharded over the members axis (every host holds all)."""
    sharding = NamedSharding(mesh, P(MEMBER_AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx]), tree)


def _put_replicated(tree, mesh: Mesh):
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]),
                        tree)


def init_group_state(group: Group, members: list[dict], base, mesh: Mesh) -> dict:
    """The group's stacked state: step, params, rest, opt_state, seed, weights (leading axis M)."""
    configs = [member_config(base, members[i]) for i in group.members]
    configs += [configs[-1]] * group.padding
    template = padded_template(group.config, group.a_slots, group.n_slots)
    parts = [init_member(c, template) for c in configs]
    params, rest, opt_state = (_stack([p[i] for p in parts]) for i in range(3))
    stacked = {
        "params": params,
        "rest": rest,
        "opt_state": opt_state,
        "seed": np.asarray([int(c.train.seed) for c in configs], np.uint32),
        "weights": {name: np.asarray([c.loss.weights[name] for c in configs], np.float32) for name in WEIGHT_NAMES},
    }
    state = _put_stacked(stacked, mesh)
    state["step"] = _put_replicated(np.zeros((), np.int32), mesh)
    return state


# ---------------------------------------------------------------------------------------------
# The vmapped program.

def make_sweep_step(graphdef, tx, config):
    """jit-able sweep_step(state, batches, sampler) -> (state, terms): k updates of every member.

    vmap over the member axis of params, rest, opt_state, seed and weights; the data
    (`batches` (k, B, ...) or the device-resident `sampler`) and the step are shared. A member
    sees exactly the updates a standalone run with its hyperparameters would.
    """
    update = train.make_update(graphdef, tx, config)
    steps = int(config.train.steps_per_dispatch)

    def member_steps(params, rest, opt_state, seed, weights, step, batches, sampler):
        base_key = jax.random.key(seed)

        def body(carry, batch):
            params, opt_state, step = carry
            (params, opt_state), terms = update(params, rest, opt_state, step, base_key, batch, weights, sampler)
            return (params, opt_state, step + 1), terms

        (params, opt_state, _), terms = jax.lax.scan(body, (params, opt_state, step), batches, length=steps)
        return params, opt_state, terms

    vmapped = jax.vmap(member_steps, in_axes=(0, 0, 0, 0, 0, None, None, None))

    def sweep_step(state, batches, sampler=None):
        params, opt_state, terms = vmapped(state["params"], state["rest"], state["opt_state"], state["seed"],
                                           state["weights"], state["step"], batches, sampler)
        return state | {"params": params, "opt_state": opt_state, "step": state["step"] + steps}, terms

    return sweep_step


_PROGRAMS: dict = {}


def jitted_sweep_step(graphdef, config):
    """jit(make_sweep_step), state donated; one per structure and process, so groups (and reruns in
    one process) of the same structure reuse the compiled program."""
    static = {"loss": config.loss.to_dict(), "batch": config.data.batch.to_dict(),
              "steps_per_dispatch": config.train.steps_per_dispatch}
    key = ("step", graphdef, json.dumps(static, sort_keys=True, default=str))
    if key not in _PROGRAMS:
        tx = train.make_optimizer(config.optim)  # its hyperparameters come from each member's state
        _PROGRAMS[key] = jax.jit(make_sweep_step(graphdef, tx, config), donate_argnums=0)
    return _PROGRAMS[key]


def make_member_scorer(graphdef):
    """jit(params, rest, features, mask) -> (M, B, T) test-mode scores of every member."""

    @jax.jit
    def score(params, rest, features, mask):
        return jax.vmap(lambda p, r: nnx.merge(graphdef, p, r).scores(features, mask))(params, rest)

    return score


def _gather(x) -> np.ndarray:
    """The global value of a (possibly multi-host) array."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ---------------------------------------------------------------------------------------------
# Data: shared by the members of a group.

class SweepData:
    """Training batches shared by all members: a device-resident sampler (each member draws with
    its own seed key) or grain batches (the same batches for every member)."""

    def __init__(self, config, mesh: Mesh):
        self.steps = int(config.train.steps_per_dispatch)
        self.mesh = mesh
        shards = pipeline.open_split(config.data, config.data.train_split)
        self.sampler = self.iterator = None
        clips = int(config.data.get("abnormal_clips", 0) or 0)
        resident = pipeline.use_device_resident(config.data, shards)
        if clips and not resident:
            raise ConfigError(f"config.data.abnormal_clips = {clips} needs the device-resident data mode "
                              "(set --config.data.device_resident=true)")
        if resident:
            streams = pipeline.select_streams(shards, config.data)
            if clips:
                streams[1] = subset_clips(streams[1], clips, int(config.data.seed))
            host = pipeline.build_resampled_table(shards, streams, int(config.data.segments))
            self.sampler = pipeline.DeviceResidentSampler.from_table(
                host, pipeline.stream_counts(config.data), sharding=NamedSharding(mesh, P()))
        else:  # every host reads the whole global batch: it is replicated over the members
            self.iterator = pipeline.make_train_iterator(config.data, process_index=0, process_count=1,
                                                         shards=shards)

    def next(self):
        """The next `steps` batches stacked (k, B, ...), replicated; None when sampled on device."""
        if self.iterator is None:
            return None
        local = [next(self.iterator) for _ in range(self.steps)]
        return _put_replicated({k: np.stack([b[k] for b in local]) for k in local[0]}, self.mesh)


def subset_clips(indices: np.ndarray, clips: int, seed: int) -> np.ndarray:
    """A fixed random subset of `clips` pseudo-abnormal videos (the same for every member and rerun)."""
    if clips > len(indices):
        raise ConfigError(f"config.data.abnormal_clips = {clips}: the training split has only {len(indices)} "
                          "abnormal-stream videos")
    order = np.random.default_rng([seed, 1]).permutation(len(indices))
    return np.sort(indices[order[:clips]])


class MemberEvaluator:
    """Scores every member on the whole test set and computes the UR-DMU protocol's metrics."""

    def __init__(self, config, graphdef, mesh: Mesh):
        self.batches, self.evalset = pipeline.make_eval_batches(config.data)
        self.mesh = mesh
        self.scorer = _PROGRAMS.setdefault(("score", graphdef), make_member_scorer(graphdef))

    def __call__(self, params, rest) -> list[dict]:
        scores = None
        for batch in self.batches:
            features, mask = _put_replicated({"f": batch["features"], "m": batch["mask"]}, self.mesh).values()
            out = _gather(self.scorer(params, rest, features, mask))  # (M, B, T)
            if scores is None:
                scores = [[None] * len(self.evalset) for _ in range(out.shape[0])]
            for row, video in enumerate(batch["video"]):
                if video >= 0:
                    for m in range(out.shape[0]):
                        scores[m][video] = out[m, row, : self.evalset.lengths[video]]
        return [metrics.video_metrics(s, self.evalset.frame_labels, self.evalset.anomaly_classes) for s in scores]


# ---------------------------------------------------------------------------------------------
# Running groups.

def _jsonable(value):
    return value.item() if isinstance(value, np.generic) else value


def train_group(group: Group, members: list[dict], base, workdir: pathlib.Path, data_dir: pathlib.Path,
                is_main: bool) -> list[dict] | None:
    """Trains one group to the end (resuming from its checkpoint); per-member results, or None if preempted."""
    config = group.config.copy_and_resolve_references()
    config.data.dir = str(data_dir)
    group_dir = workdir / "groups" / f"{group.index:03d}"
    if is_main:
        group_dir.mkdir(parents=True, exist_ok=True)
    mesh = member_mesh(group.size)
    graphdef, _, _ = train.split_model(padded_template(config, group.a_slots, group.n_slots))
    state = init_group_state(group, members, base, mesh)
    data = SweepData(config, mesh)
    evaluator = MemberEvaluator(config, graphdef, mesh)
    manager = train.make_checkpoint_manager(group_dir, config)
    state, progress = train.restore_checkpoint(manager, state, data)
    n = group.size
    progress = progress or {"step": 0, "best_auc": [-1.0] * n, "best_step": [-1] * n, "best_metrics": [None] * n,
                            "final_auc": [None] * n, "final_loss": [None] * n, "train_wall_s": 0.0}
    step = int(progress["step"])
    sweep_step = jitted_sweep_step(graphdef, config)

    total, k = int(config.train.steps), int(config.train.steps_per_dispatch)
    if total % k:
        raise ConfigError(f"config.train.steps = {total} must be a multiple of train.steps_per_dispatch = {k}")
    preemption = train.PreemptionFlag()
    log = open(group_dir / "metrics.jsonl", "a", buffering=1) if is_main else None
    bar = tqdm(total=total, initial=step, desc=f"group {group.index} ({len(group.members)} members)",
               disable=not is_main, unit="step")
    segment_start = time.time()
    while step < total:
        state, terms = sweep_step(state, data.next(), data.sampler)
        step += k
        bar.update(k)
        if step % config.train.log_every == 0 or step == total:
            host_terms = {name: _gather(v) for name, v in terms.items()}  # (M, k)
            progress["final_loss"] = host_terms["total"][:, -1].tolist()
            if log:
                for m in range(len(group.members)):
                    for j in range(k):
                        row = {"step": step - k + j + 1, "member": group.members[m]}
                        row |= {name: float(v[m, j]) for name, v in host_terms.items()}
                        log.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=f"{np.mean(progress['final_loss'][:len(group.members)]):.4f}")
        if step % config.train.eval_every == 0 or step == total:
            for m, result in enumerate(evaluator(state["params"], state["rest"])):
                progress["final_auc"][m] = result["auc"]
                if result["auc"] > progress["best_auc"][m]:
                    progress["best_auc"][m], progress["best_step"][m] = result["auc"], step
                    progress["best_metrics"][m] = {k2: v for k2, v in result.items() if np.isscalar(v)}
        if step % config.train.checkpoint_every == 0 or step == total or preemption.requested:
            progress["step"] = step
            progress["train_wall_s"] += time.time() - segment_start
            segment_start = time.time()
            train.save_checkpoint(manager, state, data, progress)
            if preemption.requested and step < total:
                logging.warning("SIGTERM: saved group %d at step %d; rerun the same command to resume",
                                group.index, step)
                bar.close()
                if log:
                    log.close()
                return None
    bar.close()
    if log:
        log.close()
    host_params = jax.tree.map(_gather, state["params"])
    results = []
    for m, index in enumerate(group.members):
        best = progress["best_metrics"][m] or {}
        results.append({
            "member": index, "group": group.index, **{a: _jsonable(v) for a, v in members[index].items()},
            "best_auc": best.get("auc"), "best_ap": best.get("average_precision"),
            "best_ap_pr_trapezoid": best.get("ap_pr_trapezoid"), "best_step": progress["best_step"][m],
            "final_auc": progress["final_auc"][m], "final_loss": progress["final_loss"][m],
            "params_sha256": train.params_sha256(jax.tree.map(lambda x: x[m], host_params)),
        })
    return results


def run_sweep(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> list[dict]:
    """Trains every member of the sweep in `config`; writes results, plots; returns the results rows."""
    if "sweep" not in config:
        raise ConfigError("the config has no `sweep` field: is this a sweep config (configs/sweeps/*.py)?")
    workdir = pathlib.Path(workdir)
    is_main = jax.process_index() == 0
    base = base_of(config)
    members = expand_members(config.sweep)
    data_dir = train.resolve_data_dir(base)
    for i, m in enumerate(members):
        try:
            check_training_config(member_config(base, m), data_dir if i == 0 else None)
        except ConfigError as e:
            raise ConfigError(f"sweep member {i} {m}: {e}") from None
    groups = plan_groups(base, members, int(config.sweep.get("members_per_group", 0)), jax.device_count())

    definition = {"members": [{a: _jsonable(v) for a, v in m.items()} for m in members],
                  "base": json.loads(base.to_json_best_effort())}
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        saved = workdir / "sweep.json"
        if saved.exists() and json.loads(saved.read_text())["members"] != definition["members"]:
            raise ConfigError(f"{saved} holds a different sweep (other members): use a new --workdir")
        atomic.write_text(saved, json.dumps(definition, indent=2))
        atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
    progress_path = workdir / PROGRESS_JSON
    done = json.loads(progress_path.read_text()) if progress_path.exists() else {"groups": {}}
    if is_main:
        print(f"pavad-sweep: {len(members)} members in {len(groups)} group(s) on {jax.device_count()} device(s)")
    for group in groups:
        if str(group.index) in done["groups"]:
            continue
        start = time.time()
        results = train_group(group, members, base, workdir, data_dir, is_main)
        if results is None:
            return []
        done["groups"][str(group.index)] = {"results": results, "wall_s": round(time.time() - start, 3)}
        if is_main:
            atomic.write_text(progress_path, json.dumps(done, indent=2))
    rows = sorted((r for g in done["groups"].values() for r in g["results"]), key=lambda r: r["member"])
    axes = list(dict.fromkeys(a for m in members for a in m))
    for row in rows:  # a list sweep may set an axis on some members only: record every member's value
        config_of_member = member_config(base, members[row["member"]])
        for axis in axes:
            value = _get_field(config_of_member, AXES[axis])
            row.setdefault(axis, _jsonable(FIELD_DEFAULTS.get(axis) if value is None else value))
    if is_main:
        write_results(workdir, rows, axes)
    return rows


# ---------------------------------------------------------------------------------------------
# Results and plots.

def write_results(workdir: pathlib.Path, rows: list[dict], axes: list[str]) -> None:
    """sweep_results.csv / .json and PNG plots of best AUC against every swept axis."""
    columns = ["member", "group", *axes, "best_auc", "best_ap", "best_ap_pr_trapezoid", "best_step", "final_auc",
               "final_loss", "params_sha256"]
    with atomic.atomic_path(workdir / RESULTS_CSV) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    best = max(rows, key=lambda r: r["best_auc"] if r["best_auc"] is not None else -1.0)
    atomic.write_text(workdir / RESULTS_JSON, json.dumps({"axes": axes, "best": best, "members": rows}, indent=2))
    swept = [a for a in axes if len({json.dumps(r[a]) for r in rows}) > 1]
    for axis in swept:
        plot_axis(workdir / f"auc_vs_{axis}.png", rows, axis)
    varied = [a for a in swept if a != "seed"]  # seeds are averaged in each cell
    if len(varied) == 2:
        plot_heatmap(workdir / f"auc_heatmap_{varied[0]}_{varied[1]}.png", rows, *varied)


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_axis(path: pathlib.Path, rows: list[dict], axis: str) -> None:
    """Best AUC of every member against one axis; the mean over members with the same value joined."""
    plt = plots.pyplot()
    values = [r[axis] for r in rows]
    aucs = [r["best_auc"] if r["best_auc"] is not None else np.nan for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if _numeric(values):
        x = np.asarray(values, float)
        ax.scatter(x, aucs, alpha=0.6, label="members")
        levels = np.unique(x)
        ax.plot(levels, [np.nanmean(np.asarray(aucs)[x == v]) for v in levels], "-o", c="tab:red", label="mean")
        if levels.min() > 0 and levels.max() / levels.min() >= 100:
            ax.set_xscale("log")
        ax.legend(loc="best")
    else:
        labels = sorted({json.dumps(v) for v in values})
        x = [labels.index(json.dumps(v)) for v in values]
        ax.scatter(x, aucs, alpha=0.6)
        ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel=axis, ylabel="best frame AUC", title=f"AUC against {axis}")
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=110)


def plot_heatmap(path: pathlib.Path, rows: list[dict], x_axis: str, y_axis: str) -> None:
    """Mean best AUC over members in each (x, y) cell of a 2-D sweep."""
    plt = plots.pyplot()
    xs = sorted({json.dumps(r[x_axis]) for r in rows}, key=lambda s: json.loads(s))
    ys = sorted({json.dumps(r[y_axis]) for r in rows}, key=lambda s: json.loads(s))
    grid = np.full((len(ys), len(xs)), np.nan)
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            cell = [r["best_auc"] for r in rows if json.dumps(r[x_axis]) == x and json.dumps(r[y_axis]) == y
                    and r["best_auc"] is not None]
            if cell:
                grid[j, i] = np.mean(cell)
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 2.5, 0.8 * len(ys) + 2))
    image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    for j in range(len(ys)):
        for i in range(len(xs)):
            if np.isfinite(grid[j, i]):
                ax.text(i, j, f"{grid[j, i]:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_yticks(range(len(ys)), ys)
    ax.set(xlabel=x_axis, ylabel=y_axis, title="best frame AUC")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=110)


# ---------------------------------------------------------------------------------------------

FLAGS_HELP = """
Flags:
  --config FILE[:ARG]     sweep config (required); --config.FIELD=VALUE overrides a field
  --workdir DIR           sweep folder (required); rerun the same command to resume
  --coordinator_address, --num_processes, --process_id   multi-host runs (see launch/)
"""


def main(argv=None):
    from absl import app, flags

    from pavad_jax import distributed

    distributed.define_run_flags(
        "Sweep config, e.g. configs/sweeps/synthetic_lambda.py:runlocal; override fields with --config.field=value.",
        "Sweep folder: per-group checkpoints, sweep_results.csv/json, plots. Rerun to resume.",
        __doc__ + FLAGS_HELP)
    FLAGS = flags.FLAGS

    def _main(_):
        distributed.initialize_from_flags()
        try:
            rows = run_sweep(FLAGS.config, FLAGS.workdir)
        except ConfigError as e:
            raise SystemExit(f"pavad-sweep: {e}") from None
        if rows and jax.process_index() == 0:
            best = max(rows, key=lambda r: r["best_auc"] or -1.0)
            values = {a: best[a] for a in AXES if a in best}
            print(f"{len(rows)} members; best AUC {best['best_auc']:.4f} (member {best['member']}: {values}); "
                  f"results in {pathlib.Path(FLAGS.workdir) / RESULTS_CSV}")

    app.run(_main, argv=argv)


if __name__ == "__main__":
    main()
