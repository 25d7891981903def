"""Sweep schedules that spend compute where it pays: successive halving and population-based training.

  sweep.schedule = "grid"                 every member trains every step (sweep.py, the default)
  sweep.schedule = "successive_halving"   rungs at sweep.rungs (steps): the top 1/sweep.eta of the
                   members by train.select_by go on, re-packed into a smaller vmapped program, or
                   (sweep.refill) the stopped members' slots get fresh draws from the search space
  sweep.schedule = "pbt"                  every sweep.ready steps the bottom sweep.pbt.quantile of
                   the members copy a top member's state on the device and perturb its traced
                   hyperparameters (sweep.pbt.hyperparameters) by a factor of sweep.pbt.factors,
                   clipped to sweep.pbt.bounds; lineage.jsonl, pbt_winner.json, pbt_replay.py

Both run one structure (traced axes only) as one program and need the device-resident sampler,
whose batch depends on the step alone, so a restarted program continues on the same batches.
docs/sweeps.md has the details.
"""
from __future__ import annotations

import json
import math
import pathlib

import jax
import ml_collections
import numpy as np

from pavad_jax import atomic, checkpoint, distributed, engine, plots, sweep, train
from pavad_jax.checkpoint import MEMBERS_DIR
from pavad_jax.config_base import SELECT_BY
from pavad_jax.config_loader import ConfigError
from pavad_jax.data import pipeline
from pavad_jax.losses import default_loss_weights

SCHEDULES = ("grid", "successive_halving", "pbt")
PBT_HYPERPARAMETERS = tuple(sweep.TRACED_AXES.keys() - {"seed", "a_slots", "n_slots"})
LINEAGE, WINNER, REPLAY = "lineage.jsonl", "pbt_winner.json", "pbt_replay"


def _bad(field: str, value, why: str):
    return ConfigError(f"config.sweep.{field} = {value!r}: {why}")


def schedule_of(spec: ml_collections.ConfigDict) -> str:
    schedule = spec.get("schedule", "grid")
    if schedule not in SCHEDULES:
        raise _bad("schedule", schedule, f"must be one of {SCHEDULES}")
    return schedule


def check_schedule(config: ml_collections.ConfigDict, members: list[dict]) -> str:
    """The sweep's schedule, its fields checked (ConfigError naming the field)."""
    spec, train_cfg = config.sweep, config.train
    schedule = schedule_of(spec)
    if schedule == "grid":
        return schedule
    structural = sorted({a for m in members for a in m if a in sweep.STRUCTURAL_AXES})
    if structural:
        raise _bad("schedule", schedule, f"runs one program; structural axes {structural} need schedule 'grid'")
    if int(spec.get("members_per_group", 0)) not in (0, len(members)):
        raise _bad("members_per_group", spec.members_per_group,
                   f"schedule {schedule!r} trains all members together (0)")
    if not pipeline.use_device_resident(config.data):
        raise ConfigError(f"config.data.device_resident = {config.data.device_resident!r}: schedule {schedule!r} "
                          "restarts or rewrites the program mid-run and needs the device-resident sampler (True)")
    steps, k = int(train_cfg.steps), int(train_cfg.steps_per_dispatch)
    if schedule == "successive_halving":
        rungs = list(spec.get("rungs", ()) or ())
        if not rungs or rungs != sorted(set(rungs)) or not all(isinstance(r, int) and 0 < r < steps and r % k == 0
                                                                 for r in rungs):
            raise _bad("rungs", rungs, f"needs increasing steps in (0, train.steps = {steps}), multiples of "
                                       f"train.steps_per_dispatch = {k}")
        eta = spec.get("eta", 2)
        if not isinstance(eta, int) or eta < 2:
            raise _bad("eta", eta, "must be an int >= 2 (keep the top 1/eta at each rung)")
        if spec.get("refill", False) and spec.get("kind", "grid") == "list":
            raise _bad("refill", True, "draws new members from the search space: needs kind 'grid' or 'random'")
        return schedule
    ready = spec.get("ready", 0)
    if not isinstance(ready, int) or ready < 1 or ready % int(train_cfg.eval_every) or ready >= steps:
        raise _bad("ready", ready, f"must be a positive multiple of train.eval_every = {train_cfg.eval_every}, "
                                   f"below train.steps = {steps} (members are ranked by that evaluation)")
    if any(a in m for m in members for a in ("a_slots", "n_slots")):
        raise _bad("axes", "a_slots/n_slots", "PBT copies parameters between members: slot counts cannot vary")
    pbt = spec.get("pbt", ml_collections.ConfigDict())
    names = pbt_hyperparameters(spec, members)
    if not names:
        raise _bad("pbt.hyperparameters", [],
                   f"name the traced hyperparameters to perturb ({sorted(PBT_HYPERPARAMETERS)})")
    bounds = dict(pbt.get("bounds", {}) or {})
    for name in names:
        if name not in PBT_HYPERPARAMETERS:
            raise _bad("pbt.hyperparameters", name,
                       f"not a traced hyperparameter; choose from {sorted(PBT_HYPERPARAMETERS)}")
        b = bounds.get(name)
        if b is None or len(b) != 2 or not 0 <= b[0] <= b[1]:
            raise _bad(f"pbt.bounds.{name}", b, "needs (low, high) with 0 <= low <= high")
    quantile = pbt.get("quantile", 0.25)
    if not 0 < quantile <= 0.5 or math.floor(quantile * len(members)) < 1:
        raise _bad("pbt.quantile", quantile, f"must be in (0, 0.5] and leave >= 1 of {len(members)} members per side")
    factors = tuple(pbt.get("factors", (0.8, 1.25)))
    if not factors or any(f <= 0 for f in factors):
        raise _bad("pbt.factors", factors, "needs positive perturbation factors")
    return schedule


def pbt_hyperparameters(spec, members) -> list[str]:
    """The hyperparameters PBT perturbs: sweep.pbt.hyperparameters, or the swept traced ones."""
    pbt = spec.get("pbt", ml_collections.ConfigDict())
    names = pbt.get("hyperparameters", None)
    if names is None:
        names = [a for a in dict.fromkeys(a for m in members for a in m) if a in PBT_HYPERPARAMETERS]
    return list(names)


def _score(result: train.MemberResult, metric: str, step: int) -> float:
    """The member's metric at its evaluation at `step`; -inf when it diverged or was not evaluated."""
    final = result.final or {}
    value = final.get(metric)
    if result.diverged_at is not None or final.get("step") != step or value is None or not math.isfinite(value):
        return -math.inf
    return float(value)


def _row(index: int, member: dict, result: train.MemberResult, progress_entry: dict, **extra) -> dict:
    best = result.best or {}
    return {"member": index, "group": 0, **{a: sweep._jsonable(v) for a, v in member.items()},
            "best_auc": best.get("auc"), "best_ap": best.get("average_precision"),
            "best_ap_pr_trapezoid": best.get("ap_pr_trapezoid"), "best_step": result.best_step,
            "final_auc": (result.final or {}).get("auc"), "final_loss": progress_entry["final_loss"],
            "diverged_at": result.diverged_at, "params_sha256": result.params_sha256,
            "evals": [{"step": e["step"], "auc": e.get("auc")} for e in result.evals], **extra}


# ---------------------------------------------------------------------------------------------
# Successive halving.

def _refill_draws(spec, count: int, rung: int) -> list[dict]:
    """`count` fresh members from the search space (grid axes: a uniform choice of their values)."""
    rng = np.random.default_rng([int(spec.get("random_seed", 0)), 1000 + rung])
    axes = dict(spec.get("axes", {}) or {})
    if spec.get("kind", "grid") == "grid":
        axes = {name: ("choice", list(values)) for name, values in axes.items()}
    return [{name: sweep._draw(rng, name, a) for name, a in axes.items()} for _ in range(count)]


def run_halving(config, workdir: pathlib.Path, base, members: list[dict], data_dir: pathlib.Path):
    """Trains the sweep by successive halving: (rows of every member, stopped ones at their rung;
    summary fields; every member including refills), or None when preempted (rerun to resume)."""
    spec, is_main = config.sweep, jax.process_index() == 0
    steps, eta, refill = int(base.train.steps), int(spec.get("eta", 2)), bool(spec.get("refill", False))
    ends = [*spec.rungs, steps]
    metric = SELECT_BY[base.train.select_by]
    structure = sweep.plan_groups(base, members, 0, jax.device_count())[0].config
    rows_per_batch = sum(structure.data.batch.values())
    progress_path = workdir / sweep.PROGRESS_JSON
    done = json.loads(progress_path.read_text()) if progress_path.exists() else {"rungs": []}
    everyone = list(members) + [m for r in done["rungs"] for m in r.get("added", [])]
    slots = list(range(len(members)))
    configs_of = lambda ids: [sweep.member_config(base, everyone[i]) for i in ids]
    for rung, end in enumerate(ends):
        begin = 0 if rung == 0 else ends[rung - 1]
        if rung < len(done["rungs"]):
            slots = done["rungs"][rung]["next"]
            continue
        configs = configs_of(slots)
        start = None
        if rung > 0:
            start = _continue(workdir, rung, begin, done["rungs"][rung - 1], configs_of, structure, rows_per_batch)
        mesh = distributed.member_mesh(len(slots), rows_per_batch)
        leg = structure.copy_and_resolve_references()
        leg.train.steps = end  # the loop runs from the rung's start (its progress) to here
        results, status, progress = train.train_members(
            leg, configs, workdir / "rungs" / f"{rung:02d}", data_dir,
            export_dirs=[workdir / MEMBERS_DIR / f"{i:03d}" for i in slots], member_ids=slots, mesh=mesh,
            desc=f"rung {rung} ({len(slots)} members, steps {begin}-{end})", start=start)
        if status == "preempted":
            return None
        last = end == steps
        order = sorted(range(len(slots)), key=lambda p: -_score(results[p], metric, end))
        kept = sorted(order if last else order[:max(1, len(slots) // eta)])
        stopped = [p for p in range(len(slots)) if p not in kept]
        added = _refill_draws(spec, len(stopped), rung) if refill and not last else []
        for draw in added:  # a refill must fit the program's padded memory banks
            for axis in ("a_slots", "n_slots"):
                if int(draw.get(axis, 0)) > int(structure.model[axis]):
                    raise _bad(f"axes.{axis}", draw[axis], f"a refill draw exceeds the first members' largest "
                                                           f"{axis} = {structure.model[axis]}, which sets the program")
        fresh = iter(range(len(everyone), len(everyone) + len(added)))
        everyone += added
        following = [slots[p] if p in kept else next(fresh) for p in range(len(slots))] if added else \
            [slots[p] for p in kept]
        rows = [_row(slots[p], everyone[slots[p]], results[p], progress["members"][p], rung=rung,
                     stopped_at=None if p in kept and last else (end if p not in kept else None))
                for p in range(len(slots)) if p not in kept or last]
        done["rungs"].append({"slots": slots, "next": following, "kept": [slots[p] for p in kept], "added": added,
                              "member_steps": len(slots) * (end - begin), "rows": rows})
        if is_main:
            atomic.write_text(progress_path, json.dumps(done, indent=2))
        slots = following
    used = sum(r["member_steps"] for r in done["rungs"])
    rows = sorted((row for r in done["rungs"] for row in r["rows"]), key=lambda r: r["member"])
    full = len(members) * steps
    if is_main:
        print(f"successive halving (eta {eta}{', refill' if refill else ''}): {used} member-steps for "
              f"{len(everyone)} configurations; the full grid of {len(members)} members takes {full} member-steps "
              f"({used / full:.0%})")
    extra = {"member_steps": used, "grid_member_steps": full, "configurations": len(everyone)}
    return rows, extra, everyone


def _continue(workdir, rung, begin, previous, configs_of, structure, rows_per_batch):
    """(host state, progress) that rung `rung` starts from: the previous rung's last checkpoint,
    sliced to its survivors; with refill, the stopped members' slots hold fresh members."""
    prev_slots, following = previous["slots"], previous["next"]
    template_detector = train.padded_template(structure, structure.model.a_slots, structure.model.n_slots)
    template = engine.stack_members([train.init_member(c, template_detector) for c in configs_of(prev_slots)])
    prev_mesh = distributed.member_mesh(len(prev_slots), rows_per_batch)
    saved = checkpoint.TrainCheckpoints(workdir / "rungs" / f"{rung - 1:02d}")
    try:
        state, progress = saved.restore(engine.put_state(template, prev_mesh), step=begin)
    finally:
        saved.close()
    host = jax.tree.map(distributed.gather, state)
    position = {m: p for p, m in enumerate(prev_slots)}
    new_ids = [m for m in following if m not in position]
    fresh = {}
    if new_ids:  # a refilled slot: a new member's params, optimiser state, seed and weights
        new_state = engine.stack_members([train.init_member(c, template_detector) for c in configs_of(new_ids)])
        fresh = {m: j for j, m in enumerate(new_ids)}
    pick = lambda tree_old, tree_new, m: (jax.tree.map(lambda x: x[position[m]], tree_old) if m in position
                                          else jax.tree.map(lambda x: x[fresh[m]], tree_new))
    fields = ("params", "rest", "opt_state", "seed", "weights", "diverged_at")
    parts = {f: [pick(getattr(host, f), getattr(new_state, f) if fresh else None, m) for m in following]
             for f in fields}
    stacked = {f: jax.tree.map(lambda *xs: np.stack(xs), *parts[f]) for f in fields}
    members = [progress["members"][position[m]] if m in position else engine.new_member_progress()
               for m in following]
    return host.replace(step=np.asarray(begin, np.int32), **stacked), progress | {"members": members}


# ---------------------------------------------------------------------------------------------
# Population-based training.

_COPY: dict = {}


def initial_hyperparameters(config) -> dict[str, float]:
    """A member's traced hyperparameters at step 0, as the float32 values its state holds."""
    values = {k: float(v) for k, v in default_loss_weights(config).items()}
    return values | {k: float(np.float32(config.optim[k])) for k in engine.OPTIM_HYPERPARAMETERS}


def make_exploit(spec, members, steps: int, mesh, metric: str):
    """The Loop's after_dispatch hook of PBT: exploit (copy a top member) and explore (perturb)."""
    pbt = spec.get("pbt", ml_collections.ConfigDict())
    names, bounds = pbt_hyperparameters(spec, members), dict(pbt.get("bounds", {}) or {})
    factors, quantile = np.asarray(tuple(pbt.get("factors", (0.8, 1.25))), np.float64), pbt.get("quantile", 0.25)
    ready, seed = int(spec.ready), int(spec.get("random_seed", 0))
    if mesh not in _COPY:
        _COPY[mesh] = engine.copy_members(mesh)
    copy = _COPY[mesh]

    def exploit(state, step, progress):
        if step % ready or step >= steps:
            return state
        entries = progress["members"]
        score = []
        for entry in entries:
            value = (entry["final"] or {}).get(metric)
            fresh = (entry["final"] or {}).get("step") == step and entry["diverged_at"] is None
            score.append(value if fresh and value is not None and math.isfinite(value) else -math.inf)
        order = sorted(range(len(entries)), key=lambda m: (-score[m], m))
        n = math.floor(quantile * len(entries))
        top, bottom = order[:n], order[-n:]
        rng = np.random.default_rng([seed, step])
        source = np.arange(len(entries), dtype=np.int32)
        for m in bottom:
            source[m] = top[int(rng.integers(len(top)))]
        before = engine.hyperparameters(state)
        state = copy(state, source)
        values = {k: v[source].astype(np.float32) for k, v in before.items()}
        for m in bottom:
            for name in names:
                low, high = bounds[name]
                values[name][m] = np.float32(np.clip(values[name][m] * factors[int(rng.integers(len(factors)))],
                                                     low, high))
        state = engine.set_hyperparameters(state, values)
        lineage = progress.setdefault("lineage", [])
        for m in bottom:
            lineage.append({"step": step, "member": m, "copied_from": int(source[m]),
                            "score": score[m], "source_score": score[source[m]],
                            "hyperparameters": {k: float(v[m]) for k, v in values.items()}})
            # The member is its source's lineage now: its own best and divergence no longer apply.
            entries[m] |= {"best": None, "best_step": -1, "diverged_at": None, "diverged_terms": None}
        return state

    return exploit


def winner_schedule(winner: int, members_hyper: list[dict], lineage: list[dict], steps: int
                    ) -> tuple[int, list[dict]]:
    """(root member, hyper_schedule) of the winner's lineage: who it descends from at step 0 and
    the traced hyperparameters it trained with, piecewise constant from each entry's step on."""
    segments, current, until = [], winner, steps
    while True:
        events = [e for e in lineage if e["member"] == current and e["step"] < until]
        if not events:
            segments.append({"step": 0, **members_hyper[current]})
            break
        last = max(events, key=lambda e: e["step"])
        segments.append({"step": last["step"], **last["hyperparameters"]})
        current, until = last["copied_from"], last["step"]
    return current, segments[::-1]


def run_pbt(config, workdir: pathlib.Path, base, members: list[dict], data_dir: pathlib.Path):
    """Trains the population with PBT: (rows, summary fields, members), or None when preempted."""
    spec, is_main = config.sweep, jax.process_index() == 0
    steps, metric = int(base.train.steps), SELECT_BY[base.train.select_by]
    structure = sweep.plan_groups(base, members, 0, jax.device_count())[0].config
    mesh = distributed.member_mesh(len(members), sum(structure.data.batch.values()))
    configs = [sweep.member_config(base, m) for m in members]
    results, status, progress = train.train_members(
        structure, configs, workdir / "groups" / "000", data_dir,
        export_dirs=[workdir / MEMBERS_DIR / f"{i:03d}" for i in range(len(members))],
        member_ids=list(range(len(members))), mesh=mesh, desc=f"pbt ({len(members)} members)",
        after_dispatch=make_exploit(spec, members, steps, mesh, metric))
    if status == "preempted":
        return None
    lineage = progress.get("lineage", [])
    rows = [_row(m, members[m], results[m], progress["members"][m]) for m in range(len(members))]
    scores = [_score(r, metric, steps) for r in results]
    if max(scores) == -math.inf:
        raise ConfigError("PBT: no member has a finite final evaluation; nothing to replay")
    winner = int(np.argmax(scores))
    root, schedule = winner_schedule(winner, [initial_hyperparameters(c) for c in configs], lineage, steps)
    replay = sweep.member_config(base, members[root])
    replay.train.hyper_schedule = tuple(schedule)
    replay.train.program_members = len(members)  # the population's program shape: bit-exact replay
    replay.train.num_devices = jax.device_count()
    summary = {"winner": winner, "root": root, "select_by": metric, "final": scores[winner],
               "params_sha256": results[winner].params_sha256, "hyper_schedule": schedule}
    if is_main:
        atomic.write_text(workdir / LINEAGE, "".join(json.dumps(e) + "\n" for e in lineage))
        atomic.write_json(workdir / WINNER, summary, indent=2)
        atomic.write_text(workdir / f"{REPLAY}.json", replay.to_json_best_effort(indent=2))
        atomic.write_text(workdir / f"{REPLAY}.py", REPLAY_CONFIG.format(winner=winner, root=root))
        plot_schedule(workdir / "pbt_winner_schedule.png", schedule, steps, pbt_hyperparameters(spec, members))
        print(f"pbt: winner member {winner} (lineage from member {root}, {len(schedule)} segment(s)), final "
              f"{metric} {scores[winner]:.4f}; replay: pavad-train --config {workdir / REPLAY}.py --workdir DIR")
    for row in rows:
        row["copies"] = sum(e["member"] == row["member"] for e in lineage)
    return rows, {"pbt_winner": winner, "pbt_root": root, "member_steps": len(members) * steps,
                  "grid_member_steps": len(members) * steps}, members


REPLAY_CONFIG = '''"""The PBT winner (member {winner}, lineage from member {root}) as a pavad-train config: its traced
hyperparameters as train.hyper_schedule, in the population's program shape (train.program_members),
so it ends with the winner's params_sha256 (pbt_winner.json).

  pavad-train --config pbt_replay.py --workdir /tmp/replay
"""
import json
import pathlib

import ml_collections


def get_config(arg=None):
    return ml_collections.ConfigDict(json.loads(pathlib.Path(__file__).with_name("pbt_replay.json").read_text()))
'''


# ---------------------------------------------------------------------------------------------
# Plots.

def plot_race(path: pathlib.Path, rows: list[dict], steps: int) -> None:
    """AUC against step of every member; a member stopped early ends in an x at its last step."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        points = [(e["step"], e["auc"]) for e in row.get("evals", []) if e.get("auc") is not None]
        if not points:
            continue
        x, y = zip(*points)
        stopped = x[-1] < steps
        line, = ax.plot(x, y, "-", lw=1, alpha=0.4 if stopped else 0.9)
        if stopped:
            ax.plot(x[-1], y[-1], "x", c=line.get_color(), ms=7)
    ax.set(xlabel="step", ylabel="frame AUC", title="the race: AUC per member (x: stopped)", xlim=(0, steps * 1.02))
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=110)


def plot_schedule(path: pathlib.Path, schedule: list[dict], steps: int, names: list[str]) -> None:
    """The PBT winner's perturbed hyperparameters against step (piecewise constant)."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 1.8 * len(names) + 0.6), squeeze=False, sharex=True)
    starts = [e["step"] for e in schedule] + [steps]
    for ax, name in zip(axes[:, 0], names):
        values = [e[name] for e in schedule]
        ax.step(starts, values + values[-1:], where="post")
        ax.set_ylabel(name)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title("PBT winner's hyperparameter schedule")
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=110)
