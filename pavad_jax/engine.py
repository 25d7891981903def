"""The one training engine: train state, update, step and loop, shared by every command.

  TrainState   the registered dataclass every run trains: step, params, non-trainable model
               state, optimiser state, seed, traced loss weights and the divergence marker, all
               but `step` with a leading member axis (pavad-train: 1 member; pavad-sweep: M)
  make_update  one optimiser update of one member from a task's loss function, with the
               finite-loss guard: a non-finite loss, loss term or gradient leaves the member's
               state as it was and records the step in `diverged_at`
  make_step    k updates in one lax.scan (train.steps_per_dispatch), each a vmap over members
  Loop         runs the step to train.steps; its periodic actions (log, evaluate, checkpoint,
               preemption, divergence) are written here once

pavad-train (train.py) is the one-member case, pavad-sweep the M-member case, pavad-bench times
this step and pavad-occ trains its autoencoders through it. Randomness is
fold_in(key(seed), step) per member, so a resumed run, or a sweep member with the same seed,
draws the same numbers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from tqdm import tqdm

from pavad_jax import distributed
from pavad_jax.config_checks import check_schedule
from pavad_jax.metric_writers import MetricsLog, member_key

# loss_fn(params, rest, batch, weights, key, step) -> (loss, (terms, new_rest)); terms are scalars;
# step (the update's index, traced) serves schedules inside a loss, such as GV-VAD's lambda warm-up.
LossFn = Callable[..., tuple[jax.Array, tuple[dict, Any]]]


# ---------------------------------------------------------------------------------------------
# Optimiser.

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


# ---------------------------------------------------------------------------------------------
# State.

@struct.dataclass
class TrainState:
    """What a run trains; every field but `step` has a leading member axis (M)."""

    step: jax.Array  # () int32: updates done, shared by the members
    params: Any  # trainable parameters
    rest: Any  # non-trainable model state (slot masks, batch statistics)
    opt_state: Any
    seed: jax.Array  # (M,) uint32: initialisation / dropout seed of each member
    weights: dict  # {name: (M,) float32}: traced loss weights
    diverged_at: jax.Array  # (M,) int32: first step (1-based, as logged) with a non-finite loss or gradient; -1 none

    @property
    def members(self) -> int:
        return int(self.seed.shape[0])


def stack_members(members: list[dict]) -> TrainState:
    """A host TrainState (numpy leaves) from per-member dicts with params, rest, opt_state, seed, weights."""
    stack = lambda *xs: np.stack([np.asarray(x) for x in xs])
    return TrainState(
        step=np.zeros((), np.int32),
        params=jax.tree.map(stack, *[m["params"] for m in members]),
        rest=jax.tree.map(stack, *[m["rest"] for m in members]),
        opt_state=jax.tree.map(stack, *[m["opt_state"] for m in members]),
        seed=np.asarray([int(m["seed"]) for m in members], np.uint32),
        weights={k: np.asarray([m["weights"][k] for m in members], np.float32) for k in members[0]["weights"]},
        diverged_at=np.full((len(members),), -1, np.int32),
    )


def put_state(state: TrainState, mesh) -> TrainState:
    """Host state -> global arrays: member fields over the "members" axis, `step` replicated."""
    placed = distributed.put_global(state.replace(step=None), distributed.member_sharded(mesh))
    return placed.replace(step=distributed.put_global(np.asarray(state.step, np.int32), distributed.replicated(mesh)))


def member_tree(tree, member: int | slice):
    """One member's slice of a stacked tree, as host numpy."""
    return jax.tree.map(lambda x: distributed.gather(x)[member], tree)


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


# ---------------------------------------------------------------------------------------------
# Update and step.

def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_update(loss_fn: LossFn, tx: optax.GradientTransformation):
    """One member's optimiser update, guarded: update(params, rest, opt_state, seed, weights,
    diverged_at, step, batch) -> (params, rest, opt_state, diverged_at, terms).

    A member whose loss, loss terms or gradient are non-finite at this step, or that diverged
    before, keeps its state unchanged, so its last good parameters are never overwritten.
    `terms` gains total (the loss, unless the task logs it) and grad_norm (the gradient's
    global L2 norm).
    """

    def update(params, rest, opt_state, seed, weights, diverged_at, step, batch):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), 0)
        (loss, (terms, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, batch, weights,
                                                                                      key, step)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(terms)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        healthy = finite & (diverged_at < 0)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(healthy, a, b), new, old)
        diverged_at = jnp.where((diverged_at < 0) & ~finite, step + 1, diverged_at)  # logged step numbers
        terms = {"total": loss, **terms, "grad_norm": grad_norm}
        return keep(new_params, params), keep(new_rest, rest), keep(new_opt_state, opt_state), diverged_at, terms

    return update


def make_step(update, steps_per_dispatch: int, *, mesh=None, row_permutation=None):
    """step(state, batches, sampler) -> (state, terms {name: (k, M)}): k updates of every member.

    `batches` holds k stacked global batches (streamed data), or is None when `sampler` (the
    device-resident data) draws batch `step` inside the program. The batch is shared by the
    members; `row_permutation` reorders host-major rows into stream-major ones (multi-host).
    With `mesh`, the sampled batch is constrained to rows over "data". Jit it with
    jit_step, which keeps the state's shardings from call to call.
    """
    batch_sharding = None if mesh is None else distributed.batch_sharded(mesh)
    vmapped = jax.vmap(update, in_axes=(0, 0, 0, 0, 0, 0, None, None))

    def step(state: TrainState, batches, sampler=None):
        def body(state, batch):
            if sampler is not None:
                batch = sampler.sample(state.step)
                if batch_sharding is not None:
                    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            elif row_permutation is not None:
                batch = jax.tree.map(lambda x: x[row_permutation], batch)
            params, rest, opt_state, diverged_at, terms = vmapped(
                state.params, state.rest, state.opt_state, state.seed, state.weights, state.diverged_at,
                state.step, batch)
            return state.replace(step=state.step + 1, params=params, rest=rest, opt_state=opt_state,
                                 diverged_at=diverged_at), terms

        return jax.lax.scan(body, state, batches, length=steps_per_dispatch, unroll=steps_per_dispatch == 1)

    return step


# ---------------------------------------------------------------------------------------------
# Traced hyperparameters and member copies (population-based training, hyperparameter schedules).

OPTIM_HYPERPARAMETERS = ("learning_rate", "weight_decay")  # in the optimiser's inject_hyperparams state


def hyperparameters(state: TrainState) -> dict[str, np.ndarray]:
    """{name: (M,) float32} of every traced hyperparameter: the loss weights, learning rate, weight decay."""
    values = {name: distributed.gather(v) for name, v in state.weights.items()}
    return values | {name: distributed.gather(state.opt_state.hyperparams[name]) for name in OPTIM_HYPERPARAMETERS}


def set_hyperparameters(state: TrainState, values: dict[str, np.ndarray]) -> TrainState:
    """The state with some traced hyperparameters replaced ({name: (M,)}); each new array keeps the
    old one's sharding and dtype, so the jitted step does not compile again."""
    put = lambda old, new: jax.device_put(np.asarray(new, old.dtype).reshape(old.shape), old.sharding)
    unknown = sorted(set(values) - set(state.weights) - set(OPTIM_HYPERPARAMETERS))
    if unknown:
        raise KeyError(f"not a traced hyperparameter: {unknown}")
    weights = {k: put(v, values[k]) if k in values else v for k, v in state.weights.items()}
    hyper = dict(state.opt_state.hyperparams)
    for name in OPTIM_HYPERPARAMETERS:
        if name in values:
            hyper[name] = put(hyper[name], values[name])
    return state.replace(weights=weights, opt_state=state.opt_state._replace(hyperparams=hyper))


def copy_members(mesh):
    """copy(state, source) -> state where member m holds member source[m]'s params, model state,
    optimiser state, seed, weights and divergence marker: one jitted gather on the member axis,
    on the device (state donated; source[m] = m keeps a member)."""

    def copy(state: TrainState, source: jax.Array) -> TrainState:
        take = lambda tree: jax.tree.map(lambda x: x[source], tree)
        return state.replace(params=take(state.params), rest=take(state.rest), opt_state=take(state.opt_state),
                             seed=state.seed[source], weights=take(state.weights),
                             diverged_at=state.diverged_at[source])

    return jax.jit(copy, donate_argnums=0, out_shardings=state_shardings(mesh))


def state_shardings(mesh) -> TrainState:
    """The state's shardings as a pytree prefix: member fields over "members", `step` replicated."""
    members = distributed.member_sharded(mesh)
    return TrainState(step=distributed.replicated(mesh), params=members, rest=members, opt_state=members,
                      seed=members, weights=members, diverged_at=members)


def jit_step(step, mesh):
    """jax.jit of a make_step function, state donated and its shardings pinned: XLA would otherwise
    return a one-member state as replicated, and the next call would compile again."""
    return jax.jit(step, donate_argnums=0, out_shardings=(state_shardings(mesh), None))


# ---------------------------------------------------------------------------------------------
# Schedule.

@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the loop's periodic actions fire (steps); all multiples of steps_per_dispatch."""

    steps: int
    steps_per_dispatch: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    eval_after: int = 0  # evaluations only at steps > eval_after (GV-VAD: every 5 steps after step 50)

    @classmethod
    def from_config(cls, train: ml_collections.ConfigDict) -> "Schedule":
        check_schedule(train)
        return cls(int(train.steps), int(train.steps_per_dispatch), int(train.log_every),
                   int(train.eval_every), int(train.checkpoint_every), int(train.get("eval_after", 0)))

    def fires(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.steps

    def evaluates(self, step: int) -> bool:
        return step > self.eval_after and self.fires(step, self.eval_every)


# ---------------------------------------------------------------------------------------------
# Preemption and divergence.

class Preemption:
    """SIGTERM (what schedulers send before killing a job) asks every process to save and stop.

    The signal reaches one process; `requested()` is a collective, called by every process at
    the same point of the loop, so all of them agree and save the same step.
    """

    def __init__(self):
        self._local = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_):
        self._local = True

    def requested(self) -> bool:
        return distributed.any_process(self._local)

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


class TrainingDiverged(RuntimeError):
    """A run's loss or gradient went non-finite; the message names the step and the terms."""


def nonfinite_terms(terms: dict[str, np.ndarray], index: tuple) -> list[str]:
    """Names of the logged terms that are not finite at `index` (e.g. (step in dispatch, member))."""
    return sorted(name for name, v in terms.items() if not np.isfinite(v[index]))


def new_member_progress() -> dict:
    return {"best_step": -1, "best": None, "final": None, "final_loss": None, "evals": [], "diverged_at": None,
            "diverged_terms": None}


def new_progress(members: int) -> dict:
    return {"step": 0, "train_wall_s": 0.0, "members": [new_member_progress() for _ in range(members)]}


# ---------------------------------------------------------------------------------------------
# The loop.

@dataclasses.dataclass
class Loop:
    """Runs `step_fn` from the state's step to schedule.steps with every periodic action.

    data.next() gives the next dispatch's batches (or None when data.sampler draws them);
    data.iterator, if any, is checkpointed with the state. evaluate(state) returns one result
    dict per member (None for a member whose scores were not finite); the member's result under
    `select_by` picks its best, and on_best(state, member, result) exports it. member_ids name
    the members in metric keys (None: a single run, unprefixed keys).
    """

    step_fn: Callable
    data: Any
    schedule: Schedule
    checkpoints: Any  # checkpoint.TrainCheckpoints
    log: MetricsLog
    evaluate: Callable[[TrainState], list[dict | None]] | None = None
    on_best: Callable[[TrainState, int, dict], None] | None = None
    select_by: str = "auc"
    member_ids: list[int] | None = None
    desc: str = "train"
    is_main: bool = True
    # after_dispatch(state, step, progress) -> state, after the step's evaluation and before its
    # checkpoint (PBT's exploit, a hyperparameter schedule); it may change members' state.
    after_dispatch: Callable[[TrainState, int, dict], TrainState] | None = None
    single_run_copies: bool = False  # member_ids None and members > 1: copies of one run (program_members)

    def _logged(self, members: int) -> list[int]:
        """Members whose metrics are logged (not the padding of a sweep group, whose id is None)."""
        if self.member_ids is None:  # a single run; train.program_members copies beyond the first are not logged
            return [0] if self.single_run_copies else list(range(members))
        return [m for m in range(members) if self.member_ids[m] is not None]

    def _key(self, member: int, key: str) -> str:
        return member_key(None if self.member_ids is None else self.member_ids[member], key)

    def _log_dispatch(self, first: int, terms: dict[str, np.ndarray], members: int) -> None:
        for j in range(self.schedule.steps_per_dispatch):
            row = {self._key(m, f"train/{name}"): v[j, m] for name, v in terms.items() for m in self._logged(members)}
            self.log.write(first + j, row)

    def _record_divergence(self, progress: dict, diverged_at: np.ndarray, first: int,
                           terms: dict[str, np.ndarray]) -> list[str]:
        """Marks newly diverged members in `progress`; returns a message per new divergence."""
        messages = []
        for m in self._logged(len(diverged_at)):
            at, entry = diverged_at[m], progress["members"][m]
            if at < 0 or entry["diverged_at"] is not None:
                continue
            names = nonfinite_terms(terms, (int(at) - first, m))
            entry["diverged_at"], entry["diverged_terms"] = int(at), names
            who = "" if self.member_ids is None else f"member {self.member_ids[m]}: "
            messages.append(f"{who}training diverged at step {int(at)}: non-finite "
                            + (", ".join(names) if names else "loss or gradient"))
        return messages

    def _evaluate(self, state: TrainState, step: int, progress: dict) -> None:
        results = self.evaluate(state)
        for m in self._logged(len(results)):
            result, entry = results[m], progress["members"][m]
            if entry["diverged_at"] is not None:
                continue  # a diverged member is frozen at its last good parameters: nothing new to report
            if result is None:
                entry["diverged_at"], entry["diverged_terms"] = step, ["evaluation scores"]
                who = "" if self.member_ids is None else f"member {self.member_ids[m]}: "
                logging.warning("%sevaluation at step %d gave non-finite scores; no metric reported", who, step)
                continue
            scalars = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.log.write(step, {self._key(m, f"eval/{k}"): v for k, v in scalars.items()})
            entry["final"] = scalars | {"step": step}
            entry["evals"].append(entry["final"])
            best = entry["best"]
            if best is None or scalars[self.select_by] > best[self.select_by]:
                entry["best"], entry["best_step"] = scalars | {"step": step, "per_class_auc": result.get(
                    "per_class_auc", {})}, step
                if self.on_best is not None:
                    self.on_best(state, m, result)

    def run(self, state: TrainState, progress: dict) -> tuple[TrainState, dict, str]:
        """(state, progress, status) with status "finished", "preempted" or "diverged" (every member).

        A single run (member_ids None) that diverges raises TrainingDiverged instead, after the
        dispatch's rows are logged and without saving: the last checkpoint stays the last good one.
        """
        schedule, k = self.schedule, self.schedule.steps_per_dispatch
        step = int(progress["step"])
        preemption = Preemption()
        bar = tqdm(total=schedule.steps, initial=step, desc=self.desc, unit="step", disable=not self.is_main)
        segment_start = time.time()
        status = "finished"
        try:
            while step < schedule.steps:
                state, terms = self.step_fn(state, self.data.next(), self.data.sampler)
                first, step = step + 1, step + k
                host_terms = {name: distributed.gather(v) for name, v in terms.items()}  # (k, M)
                diverged_at = distributed.gather(state.diverged_at)
                bar.update(k)
                for m in range(state.members):
                    if diverged_at[m] < 0:
                        progress["members"][m]["final_loss"] = float(host_terms["total"][-1, m])
                if schedule.fires(step, schedule.log_every) or (diverged_at >= first).any():
                    self._log_dispatch(first, host_terms, state.members)
                    alive = [m for m in self._logged(state.members) if diverged_at[m] < 0]
                    if alive:
                        bar.set_postfix(loss=f"{np.mean([host_terms['total'][-1, m] for m in alive]):.4f}")
                messages = self._record_divergence(progress, diverged_at, first, host_terms)
                for message in messages:
                    logging.warning("%s", message)
                if messages and self.member_ids is None:
                    raise TrainingDiverged(f"{messages[0]}. Stopped; the last good checkpoint is "
                                           f"{self._last_checkpoint()} and nothing after it was saved")
                if self.evaluate is not None and schedule.evaluates(step):
                    self._evaluate(state, step, progress)
                    if self.member_ids is None and progress["members"][0]["diverged_at"] is not None:
                        raise TrainingDiverged(f"evaluation at step {step} gave non-finite scores. Stopped; the last "
                                               f"good checkpoint is {self._last_checkpoint()}")
                if self.after_dispatch is not None:
                    state = self.after_dispatch(state, step, progress)
                preempted = preemption.requested()
                finished_all = all(progress["members"][m]["diverged_at"] is not None
                                   for m in self._logged(state.members))
                if schedule.fires(step, schedule.checkpoint_every) or preempted or finished_all:
                    progress["step"] = step
                    progress["train_wall_s"] += time.time() - segment_start
                    segment_start = time.time()
                    self.checkpoints.save(step, state, progress, getattr(self.data, "iterator", None))
                if finished_all:
                    status = "diverged"
                    break
                if preempted and step < schedule.steps:
                    logging.warning("SIGTERM: saved step %d on every process; rerun the same command to resume", step)
                    status = "preempted"
                    break
        finally:
            bar.close()
            preemption.close()
            self.log.flush()
        progress["step"] = step
        return state, progress, status

    def _last_checkpoint(self) -> str:
        latest = self.checkpoints.latest_step()
        return "none (no checkpoint was saved yet)" if latest is None else f"step {latest} in {self.checkpoints.directory}"


def finite_or_none(value) -> float | None:
    """A float for JSON summaries; None for a missing or non-finite value."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
