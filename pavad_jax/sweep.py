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
import math
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from pavad_jax import atomic, distributed, host_memory, plots, train
from pavad_jax.checkpoint import MEMBERS_DIR
from pavad_jax.config_checks import check_training_config
from pavad_jax.config_loader import ConfigError
from pavad_jax.losses import WEIGHT_NAMES

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
        # Slot counts are traced: every group of a structure pads to the structure's largest.
        configs = [member_config(base, members[i]) for i in indices]
        if "a_slots" in structural.model:  # UR-DMU's memory banks (RTFM and LAP have none)
            with structural.model.unlocked():
                structural.model.a_slots = max(int(c.model.a_slots) for c in configs)
                structural.model.n_slots = max(int(c.model.n_slots) for c in configs)
        for start in range(0, len(indices), chunk):
            part = indices[start:start + chunk]
            groups.append(Group(len(groups), part, size - len(part), structural))
    return groups


def _jsonable(value):
    return value.item() if isinstance(value, np.generic) else value


def train_group(group: Group, members: list[dict], base, workdir: pathlib.Path, data_dir: pathlib.Path
                ) -> list[dict] | None:
    """Trains one group to the end (resuming from its checkpoint); per-member rows, or None if preempted."""
    configs = [member_config(base, members[i]) for i in group.members]
    configs += [configs[-1]] * group.padding
    export_dirs = [workdir / MEMBERS_DIR / f"{i:03d}" for i in group.members] + [None] * group.padding
    mesh = distributed.member_mesh(group.size, sum(group.config.data.batch.values()))
    results, status, progress = train.train_members(
        group.config, configs, workdir / "groups" / f"{group.index:03d}", data_dir, export_dirs=export_dirs,
        member_ids=group.members + [None] * group.padding, mesh=mesh,
        desc=f"group {group.index} ({len(group.members)} members)")
    if status == "preempted":
        return None
    rows = []
    for m, index in enumerate(group.members):
        result, best = results[m], results[m].best or {}
        rows.append({
            "member": index, "group": group.index, **{a: _jsonable(v) for a, v in members[index].items()},
            "best_auc": best.get("auc"), "best_ap": best.get("average_precision"),
            "best_ap_pr_trapezoid": best.get("ap_pr_trapezoid"), "best_step": result.best_step,
            "final_auc": (result.final or {}).get("auc"), "final_loss": progress["members"][m]["final_loss"],
            "diverged_at": result.diverged_at, "params_sha256": result.params_sha256,
            "evals": [{"step": e["step"], "auc": e.get("auc")} for e in result.evals],
        })
    return rows


def run_sweep(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> list[dict]:
    """Trains every member of the sweep in `config`; writes results, plots; returns the results rows."""
    if "sweep" not in config:
        raise ConfigError("the config has no `sweep` field: is this a sweep config (configs/sweeps/*.py)?")
    workdir = pathlib.Path(workdir)
    is_main = jax.process_index() == 0
    base = base_of(config)
    members = expand_members(config.sweep)
    data_dir = train.resolve_data_dir(base)
    groups = plan_groups(base, members, int(config.sweep.get("members_per_group", 0)), jax.device_count())
    for i, m in enumerate(members):
        try:
            check_training_config(member_config(base, m), data_dir if i == 0 else None)
        except ConfigError as e:
            raise ConfigError(f"sweep member {i} {m}: {e}") from None

    from pavad_jax import sweep_schedules  # pylint: disable=import-outside-toplevel  (it imports this module)

    schedule = sweep_schedules.check_schedule(config, members)
    definition = {"members": [{a: _jsonable(v) for a, v in m.items()} for m in members],
                  "base": json.loads(base.to_json_best_effort())}
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        saved = workdir / "sweep.json"
        if saved.exists() and json.loads(saved.read_text())["members"] != definition["members"]:
            raise ConfigError(f"{saved} holds a different sweep (other members): use a new --workdir")
        atomic.write_text(saved, json.dumps(definition, indent=2))
        atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
    extra = {}
    if schedule != "grid":
        if is_main:
            print(f"pavad-sweep: {len(members)} members, schedule {schedule}, on {jax.device_count()} device(s)")
        run = sweep_schedules.run_halving if schedule == "successive_halving" else sweep_schedules.run_pbt
        outcome = run(config, workdir, base, members, data_dir)
        if outcome is None:
            return []
        rows, extra, members = outcome
        return _finish(workdir, base, members, rows, extra, is_main)
    progress_path = workdir / PROGRESS_JSON
    done = json.loads(progress_path.read_text()) if progress_path.exists() else {"groups": {}}
    if is_main:
        print(f"pavad-sweep: {len(members)} members in {len(groups)} group(s) on {jax.device_count()} device(s)")
    for group in groups:
        if str(group.index) in done["groups"]:
            continue
        start = time.time()
        results = train_group(group, members, base, workdir, data_dir)
        if results is None:
            return []
        done["groups"][str(group.index)] = {"results": results, "wall_s": round(time.time() - start, 3)}
        if is_main:
            atomic.write_text(progress_path, json.dumps(done, indent=2))
    rows = sorted((r for g in done["groups"].values() for r in g["results"]), key=lambda r: r["member"])
    return _finish(workdir, base, members, rows, {"member_steps": len(members) * int(base.train.steps),
                                                  "grid_member_steps": len(members) * int(base.train.steps)}, is_main)


def _finish(workdir, base, members, rows, extra, is_main) -> list[dict]:
    """Every row gets every axis's value; results and plots are written."""
    axes = list(dict.fromkeys(a for m in members for a in m))
    for row in rows:  # a list sweep may set an axis on some members only: record every member's value
        config_of_member = member_config(base, members[row["member"]])
        for axis in axes:
            value = _get_field(config_of_member, AXES[axis])
            row.setdefault(axis, _jsonable(FIELD_DEFAULTS.get(axis) if value is None else value))
    if is_main:
        write_results(workdir, rows, axes, extra, steps=int(base.train.steps))
    return rows


# ---------------------------------------------------------------------------------------------
# Results and plots.

SEED_METRICS = {"best_auc": "auc", "best_ap": "ap"}  # row field -> column prefix of the seed statistics


def seed_statistics(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean, sample std and 95% t-interval of the finite values (None where fewer than 2 are finite)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    stats = {"n": n, "mean": float(np.mean(finite)) if n else None, "std": None, "ci95_low": None, "ci95_high": None}
    if n >= 2:
        from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel

        std = float(np.std(finite, ddof=1))
        half = float(scipy_stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        stats |= {"std": std, "ci95_low": stats["mean"] - half, "ci95_high": stats["mean"] + half}
    return stats


def add_seed_statistics(rows: list[dict], axes: list[str]) -> list[str]:
    """Per configuration (every axis but seed), the statistics of best AUC and AP across its seeds,
    added to each of its rows; returns the new column names ([] without a seed axis)."""
    if "seed" not in axes or len({json.dumps(r["seed"]) for r in rows}) < 2:
        return []
    others = [a for a in axes if a != "seed"]
    cells: dict[str, list[dict]] = {}
    for row in rows:
        cells.setdefault(json.dumps([row[a] for a in others]), []).append(row)
    columns = ["seeds"]
    for cell in cells.values():
        for field, prefix in SEED_METRICS.items():
            stats = seed_statistics([r[field] for r in cell])
            for row in cell:
                row["seeds"] = len(cell)
                row |= {f"{prefix}_{k}": v for k, v in stats.items() if k != "n"}
    return columns + [f"{prefix}_{k}" for prefix in SEED_METRICS.values() for k in ("mean", "std", "ci95_low",
                                                                                       "ci95_high")]


def write_results(workdir: pathlib.Path, rows: list[dict], axes: list[str], extra: dict | None = None,
                  steps: int | None = None) -> None:
    """sweep_results.csv / .json and PNG plots of best AUC against every swept axis, the race of
    AUC against step and, with a seed axis, per-configuration means and 95% intervals."""
    seed_columns = add_seed_statistics(rows, axes)
    columns = ["member", "group", *axes, "best_auc", "best_ap", "best_ap_pr_trapezoid", "best_step", "final_auc",
               "final_loss", "params_sha256", *seed_columns,
               *[c for c in ("stopped_at", "copies") if any(c in r for r in rows)]]
    with atomic.atomic_path(workdir / RESULTS_CSV) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    finished = [r for r in rows if r.get("stopped_at") is None] or rows  # successive halving: the last rung
    best = max(finished, key=lambda r: r["best_auc"] if r["best_auc"] is not None else -1.0)
    atomic.write_text(workdir / RESULTS_JSON, json.dumps({"axes": axes, "best": best, **(extra or {}),
                                                          "members": rows}, indent=2))
    swept = [a for a in axes if len({json.dumps(r[a]) for r in rows}) > 1]
    for axis in swept:
        plot_axis(workdir / f"auc_vs_{axis}.png", rows, axis)
    varied = [a for a in swept if a != "seed"]  # seeds are averaged in each cell
    if len(varied) == 2:
        plot_heatmap(workdir / f"auc_heatmap_{varied[0]}_{varied[1]}.png", rows, *varied)
    if steps is not None and any(r.get("evals") for r in rows):
        from pavad_jax.sweep_schedules import plot_race  # pylint: disable=import-outside-toplevel

        plot_race(workdir / "auc_race.png", rows, steps)
    if seed_columns:
        plot_seed_intervals(workdir / "seed_intervals.png", rows, [a for a in axes if a != "seed"])


def plot_seed_intervals(path: pathlib.Path, rows: list[dict], others: list[str]) -> None:
    """Mean best AUC and AP of every configuration with its 95% interval across seeds."""
    plt = plots.pyplot()
    cells = {}
    for row in rows:
        cells.setdefault(json.dumps({a: row[a] for a in others}), row)
    labels = list(cells)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 0.6 * len(labels) + 3), 4), squeeze=False)
    for ax, prefix in zip(axes[0], SEED_METRICS.values()):
        column = lambda name: np.asarray([np.nan if r[f"{prefix}_{name}"] is None else r[f"{prefix}_{name}"]
                                          for r in cells.values()])
        mean, low, high = column("mean"), column("ci95_low"), column("ci95_high")
        ax.errorbar(range(len(labels)), mean, yerr=[mean - low, high - mean], fmt="o", capsize=3)
        ax.set_xticks(range(len(labels)), [", ".join(f"{k}={v}" for k, v in json.loads(s).items()) or "config"
                                            for s in labels], rotation=60, ha="right", fontsize=7)
        ax.set(ylabel=f"best {prefix.upper()}",
               title=f"{prefix.upper()}: mean and 95% interval over {rows[0]['seeds']} seeds")
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=110)


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

def main(argv=None):
    host_memory.reuse_freed_memory()  # before JAX starts its backend
    parser = train.build_parser("pavad-sweep", __doc__,
                                "sweep config, e.g. configs/sweeps/synthetic_lambda.py:runlocal",
                                "sweep folder: per-group checkpoints, members/<i>/{best,last}, sweep_results.csv/json, "
                                "plots; rerun to resume")
    args, config = train.parse_command_line(parser, argv, "sweep")
    distributed.initialize_from_args(args)
    try:
        rows = run_sweep(config, args.workdir)
    except ConfigError as e:
        raise SystemExit(f"pavad-sweep: {e}") from None
    if rows and jax.process_index() == 0:
        finished = [r for r in rows if r["best_auc"] is not None and r.get("stopped_at") is None]
        diverged = [r["member"] for r in rows if r["diverged_at"] is not None]
        if diverged:
            print(f"{len(diverged)} member(s) diverged (their results stop at the last finite step): {diverged}")
        if finished:
            best = max(finished, key=lambda r: r["best_auc"])
            values = {a: best[a] for a in AXES if a in best}
            print(f"{len(rows)} members; best AUC {best['best_auc']:.4f} (member {best['member']}: {values}); "
                  f"results in {pathlib.Path(args.workdir) / RESULTS_CSV}")
        print_seed_statistics(rows)


def print_seed_statistics(rows: list[dict]) -> None:
    """One line per configuration of a sweep with a seed axis: mean, std and 95% interval."""
    shown = set()
    for row in rows:
        if row.get("auc_mean") is None or (row.get("auc_mean"), row.get("ap_mean")) in shown:
            continue
        shown.add((row["auc_mean"], row["ap_mean"]))
        interval = lambda p: ("n/a" if row[f"{p}_std"] is None else
                              f"{row[f'{p}_mean']:.4f} ± {row[f'{p}_std']:.4f} (95% {row[f'{p}_ci95_low']:.4f}–"
                              f"{row[f'{p}_ci95_high']:.4f})")
        print(f"  {row['seeds']} seeds: AUC {interval('auc')}, AP {interval('ap')}")


if __name__ == "__main__":
    main()
