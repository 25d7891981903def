"""Sweep schedules: successive halving, population-based training (copy, bounds, lineage, replay), seed statistics."""
import csv
import json
import math
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from scipy import stats

from pavad_jax import distributed, engine, sweep, sweep_schedules, train
from pavad_jax.config_loader import ConfigError, load_config_file
from train_fixtures import tiny_config, write_easy_dataset

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory):
    return write_easy_dataset(tmp_path_factory.mktemp("easy"))


def sweep_config(data_dir, fields: dict, steps: int = 4, eval_every: int = 1):
    config = tiny_config(data_dir, steps=steps)
    config.data.device_resident = True
    config.train.eval_every = eval_every
    config.sweep = ml_collections.ConfigDict(fields)
    return config


# ------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("fields, message", [
    ({"schedule": "hyperband"}, r"sweep.schedule = 'hyperband'"),
    ({"schedule": "successive_halving", "rungs": [4]}, r"sweep.rungs = \[4\]"),
    ({"schedule": "successive_halving", "rungs": [2], "eta": 1}, r"sweep.eta = 1"),
    ({"schedule": "pbt", "ready": 4}, r"sweep.ready = 4"),
    ({"schedule": "pbt", "ready": 2}, r"sweep.pbt.bounds.lambda1 = None"),
    ({"schedule": "pbt", "ready": 2, "pbt": {"bounds": {"lambda1": (0, 2)}, "quantile": 0.1}}, r"pbt.quantile"),
])
def test_bad_schedules_name_the_field(easy_data, fields, message):
    config = sweep_config(easy_data, {"kind": "grid", "axes": {"lambda1": [0.0, 1.0], "seed": [0, 1]}, **fields})
    with pytest.raises(ConfigError, match=message):
        sweep_schedules.check_schedule(config, sweep.expand_members(config.sweep))


def test_schedules_refuse_structural_axes_and_the_grain_path(easy_data):
    config = sweep_config(easy_data, {"kind": "grid", "axes": {"gv_learnable": [False, True]},
                                      "schedule": "successive_halving", "rungs": [2]})
    with pytest.raises(ConfigError, match="structural axes"):
        sweep_schedules.check_schedule(config, sweep.expand_members(config.sweep))
    config = sweep_config(easy_data, {"kind": "grid", "axes": {"seed": [0, 1]}, "schedule": "successive_halving",
                                      "rungs": [2]})
    config.data.device_resident = False
    with pytest.raises(ConfigError, match="device_resident"):
        sweep_schedules.check_schedule(config, sweep.expand_members(config.sweep))


# ------------------------------------------------------------------------------ successive halving

# Small: 2 members halved to 1 (programs of 2 and 1 members); full: 4 members halved to 2.
@pytest.mark.parametrize("seeds", [[0], pytest.param([0, 1], marks=pytest.mark.slow)])
def test_successive_halving_keeps_the_top_half_at_each_rung_and_counts_member_steps(easy_data, tmp_path, seeds):
    config = sweep_config(easy_data, {"kind": "grid", "axes": {"lambda1": [0.0, 1.0], "seed": seeds},
                                      "schedule": "successive_halving", "rungs": [2], "eta": 2})
    n = 2 * len(seeds)
    rows = sweep.run_sweep(config, tmp_path)
    progress = json.loads((tmp_path / sweep.PROGRESS_JSON).read_text())
    rungs = progress["rungs"]
    assert [len(r["slots"]) for r in rungs] == [n, n // 2]
    assert [r["member_steps"] for r in rungs] == [2 * n, n]  # n members x 2 steps, then n/2 x 2
    results = json.loads((tmp_path / sweep.RESULTS_JSON).read_text())
    assert results["member_steps"] == 3 * n and results["grid_member_steps"] == 4 * n
    by_member = {r["member"]: r for r in rows}
    assert sorted(by_member) == list(range(n))
    at_rung = {m: next(e["auc"] for e in by_member[m]["evals"] if e["step"] == 2) for m in range(n)}
    stopped = set(range(n)) - set(rungs[0]["kept"])
    assert len(stopped) == n // 2 and max(at_rung[m] for m in stopped) <= min(at_rung[m] for m in rungs[0]["kept"])
    assert all(by_member[m]["stopped_at"] == 2 and by_member[m]["evals"][-1]["step"] == 2 for m in stopped)
    for m in rungs[0]["kept"]:  # a survivor's evaluations go on from its rung-0 state to the end
        assert by_member[m]["stopped_at"] is None and [e["step"] for e in by_member[m]["evals"]] == [1, 2, 3, 4]
    assert (tmp_path / "auc_race.png").read_bytes()[:4] == b"\x89PNG"
    # Rerunning resumes: nothing trains again and the rows are the same.
    again = sweep.run_sweep(config, tmp_path)
    assert [r["params_sha256"] for r in again] == [r["params_sha256"] for r in rows]


def test_refill_replaces_stopped_slots_with_fresh_draws(easy_data, tmp_path):
    config = sweep_config(easy_data, {"kind": "grid", "axes": {"lambda1": [0.0, 1.0], "seed": [0, 1]},
                                      "schedule": "successive_halving", "rungs": [2], "eta": 2, "refill": True,
                                      "random_seed": 3})
    rows = sweep.run_sweep(config, tmp_path)
    rungs = json.loads((tmp_path / sweep.PROGRESS_JSON).read_text())["rungs"]
    assert len(rungs[1]["slots"]) == 4 and len(rungs[0]["added"]) == 2  # the program keeps its size
    fresh = [m for m in rungs[1]["slots"] if m >= 4]
    assert len(fresh) == 2 and sorted(r["member"] for r in rows) == list(range(6))
    for m in fresh:  # a fresh member trained from its own initialisation: its first evaluation is after the rung
        row = next(r for r in rows if r["member"] == m)
        assert [e["step"] for e in row["evals"]] == [3, 4] and row["seed"] in (0, 1)
    results = json.loads((tmp_path / sweep.RESULTS_JSON).read_text())
    assert results["configurations"] == 6 and results["member_steps"] == results["grid_member_steps"] == 16
    at_rung = {m: next(e["auc"] for e in r["evals"] if e["step"] == 2) for r in rows for m in [r["member"]] if m < 4}
    stopped = set(range(4)) - set(rungs[0]["kept"])
    assert len(stopped) == 2 and max(at_rung[m] for m in stopped) <= min(at_rung[m] for m in rungs[0]["kept"])
    assert all(r["stopped_at"] == 2 for r in rows if r["member"] in stopped)


# Small: the runlocal grid as it is (8 members, 2 seeds), one rung at 20 of 40 steps (programs
# of 8 and 4 members); full: 16 members (4 seeds), rungs at 10, 20 and 30.
@pytest.mark.parametrize("seeds, rungs", [([0, 1], [20]),
                                          pytest.param([0, 1, 2, 3], [10, 20, 30], marks=pytest.mark.slow)])
def test_runlocal_successive_halving_matches_the_grid_winner_with_far_fewer_member_steps(tmp_path, seeds, rungs):
    config = load_config_file(REPO / "configs" / "sweeps" / "synthetic_lambda.py", "runlocal")
    config.data.synthetic_root = str(tmp_path / "cache")
    config.sweep.axes.seed = seeds
    config.train.eval_every = 10
    grid = sweep.run_sweep(config, tmp_path / "grid")
    config.sweep.schedule, config.sweep.rungs, config.sweep.eta = "successive_halving", rungs, 2
    halving = sweep.run_sweep(config, tmp_path / "halving")
    used = json.loads((tmp_path / "halving" / sweep.RESULTS_JSON).read_text())
    n, ends = 4 * len(seeds), [0, *rungs, 40]  # each rung halves the n members of the grid
    assert used["member_steps"] == sum((ends[i + 1] - ends[i]) * n // 2**i for i in range(len(rungs) + 1))
    assert used["grid_member_steps"] == n * 40
    grid_winner = max(grid, key=lambda r: r["best_auc"])
    winner = max((r for r in halving if r["stopped_at"] is None), key=lambda r: r["best_auc"])
    cell = [r["best_auc"] for r in grid if all(r[a] == grid_winner[a] for a in ("lambda1", "lambda2"))]
    print(f"grid winner {grid_winner['member']} {grid_winner['best_auc']:.4f}; halving winner {winner['member']} "
          f"{winner['best_auc']:.4f}; seed std of the grid winner's configuration {np.std(cell, ddof=1):.4f}")
    assert winner["member"] == grid_winner["member"] or (
        grid_winner["best_auc"] - winner["best_auc"] <= np.std(cell, ddof=1))


# ------------------------------------------------------------------------------ PBT

def _population(easy_data, members):
    base = sweep.base_of(sweep_config(easy_data, {"kind": "list", "members": members}))
    configs = [sweep.member_config(base, m) for m in members]
    mesh = distributed.member_mesh(len(members), 8)
    template = train.padded_template(base, 8, 8)
    return engine.put_state(engine.stack_members([train.init_member(c, template) for c in configs]), mesh), mesh


def test_pbt_copy_is_bit_exact_and_perturbed_hyperparameters_stay_in_bounds(easy_data):
    members = [{"seed": s, "lambda1": w, "learning_rate": lr} for s, w, lr in
               [(0, 0.5, 1e-3), (1, 1.0, 2e-3), (2, 1.5, 3e-3), (3, 1.9, 4e-3)]]
    state, mesh = _population(easy_data, members)
    spec = ml_collections.ConfigDict({"ready": 2, "random_seed": 0, "pbt": {
        "quantile": 0.5, "factors": (0.5, 2.0), "bounds": {"lambda1": (0.2, 2.0), "learning_rate": (1e-4, 5e-3)}}})
    exploit = sweep_schedules.make_exploit(spec, members, steps=10, mesh=mesh, metric="auc")
    scores = [0.9, 0.1, 0.8, 0.2]  # members 0 and 2 on top
    progress = engine.new_progress(4)
    for entry, score in zip(progress["members"], scores):
        entry["final"] = {"auc": score, "step": 2}
    host = lambda s: jax.tree.map(np.asarray, s.replace(step=None))
    before = host(state)
    assert exploit(state, 1, progress) is state  # not a ready step
    after = exploit(state, 2, progress)
    got = host(after)
    lineage = progress["lineage"]
    assert sorted(e["member"] for e in lineage) == [1, 3] and {e["copied_from"] for e in lineage} <= {0, 2}
    for event in lineage:
        m, src = event["member"], event["copied_from"]
        for b, a in zip(jax.tree.leaves((before.params, before.rest, before.opt_state.inner_state)),
                        jax.tree.leaves((got.params, got.rest, got.opt_state.inner_state))):
            np.testing.assert_array_equal(a[m], b[src])  # bit for bit
        assert got.seed[m] == before.seed[src]
        hyper = event["hyperparameters"]
        assert 0.2 <= hyper["lambda1"] <= 2.0 and 1e-4 <= hyper["learning_rate"] <= 5e-3
        assert hyper["lambda1"] != before.weights["lambda1"][src]  # perturbed (x0.5 or x2, then clipped)
        assert float(got.weights["lambda1"][m]) == hyper["lambda1"]
        assert float(got.opt_state.hyperparams["learning_rate"][m]) == hyper["learning_rate"]
        assert progress["members"][m]["best"] is None
    for m in (0, 2):  # the top members are untouched
        for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(got)):
            np.testing.assert_array_equal(a[m], b[m])


def test_winner_schedule_follows_the_lineage():
    hyper = [{"lambda1": float(m)} for m in range(3)]
    lineage = [{"step": 2, "member": 1, "copied_from": 0, "hyperparameters": {"lambda1": 5.0}},
               {"step": 4, "member": 2, "copied_from": 1, "hyperparameters": {"lambda1": 6.0}},
               {"step": 6, "member": 2, "copied_from": 0, "hyperparameters": {"lambda1": 7.0}}]
    assert sweep_schedules.winner_schedule(2, hyper, lineage, 8) == (0, [{"step": 0, "lambda1": 0.0},
                                                                         {"step": 6, "lambda1": 7.0}])
    assert sweep_schedules.winner_schedule(2, hyper, lineage[:2], 8) == (
        0, [{"step": 0, "lambda1": 0.0}, {"step": 2, "lambda1": 5.0}, {"step": 4, "lambda1": 6.0}])
    assert sweep_schedules.winner_schedule(1, hyper, [], 8) == (1, [{"step": 0, "lambda1": 1.0}])


def test_pbt_winner_replays_with_pavad_train_to_the_same_params(easy_data, tmp_path):
    config = sweep_config(easy_data, {"kind": "grid", "axes": {"lambda1": [0.2, 1.0], "seed": [0, 1]},
                                      "schedule": "pbt", "ready": 2, "random_seed": 1,
                                      "pbt": {"quantile": 0.5, "bounds": {"lambda1": (0.05, 3.0)}}},
                          steps=4, eval_every=2)
    rows = sweep.run_sweep(config, tmp_path / "pbt")
    lineage = [json.loads(line) for line in (tmp_path / "pbt" / sweep_schedules.LINEAGE).read_text().splitlines()]
    assert [e["step"] for e in lineage] == [2, 2]  # the bottom half copies at the ready step before the end
    winner = json.loads((tmp_path / "pbt" / sweep_schedules.WINNER).read_text())
    assert winner["params_sha256"] == rows[winner["winner"]]["params_sha256"]
    assert (tmp_path / "pbt" / "pbt_winner_schedule.png").read_bytes()[:4] == b"\x89PNG"
    train.main(["--config", str(tmp_path / "pbt" / "pbt_replay.py"), "--workdir", str(tmp_path / "replay")])
    summary = json.loads((tmp_path / "replay" / train.SUMMARY).read_text())
    assert summary["params_sha256"] == winner["params_sha256"]
    replayed = [json.loads(line) for line in (tmp_path / "replay" / "metrics.jsonl").read_text().splitlines()]
    assert all(not k.startswith("member/") for r in replayed for k in r)  # logged as one run


# Small: 2 steps, the schedule changes at step 1; full: 4 steps, changing at step 2.
@pytest.mark.parametrize("steps", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_hyper_schedule_sets_the_traced_values_from_its_steps(easy_data, tmp_path, steps):
    half = steps // 2
    config = tiny_config(easy_data, steps=steps)
    config.train.checkpoint_every = half
    config.train.hyper_schedule = ({"step": 0, "lambda1": 0.3}, {"step": half, "lambda1": 0.7, "learning_rate": 1e-3})
    train.train_and_evaluate(config, tmp_path)
    saved = train.checkpoint.TrainCheckpoints(tmp_path)
    abstract = {"weights": {"lambda1": jax.ShapeDtypeStruct((1,), np.float32)}}
    at = {step: float(np.asarray(saved.restore_fields(step, abstract)["weights"]["lambda1"])[0])
          for step in (half, steps)}
    saved.close()
    assert at == {half: np.float32(0.7), steps: np.float32(0.7)}  # set at the change's step, before its checkpoint


def test_hyper_schedule_merges_entries_up_to_a_step_and_is_checked(easy_data):
    config = tiny_config(easy_data, steps=4)
    config.train.hyper_schedule = ({"step": 0, "lambda1": 0.3}, {"step": 2, "lambda1": 0.7, "learning_rate": 1e-3})
    assert train.scheduled_hyperparameters(config.train.hyper_schedule, 1) == {"lambda1": 0.3}
    assert train.scheduled_hyperparameters(config.train.hyper_schedule, 3) == {"lambda1": 0.7, "learning_rate": 1e-3}
    bad = tiny_config(easy_data)
    bad.train.hyper_schedule = ({"step": 1, "lambda1": 0.3},)
    with pytest.raises(ConfigError, match="hyper_schedule"):
        train.check_training_config(bad)


# ------------------------------------------------------------------------------ seed statistics

def test_seed_statistics_use_the_t_interval_and_skip_non_finite_values():
    got = sweep.seed_statistics([0.7, 0.8, None, float("nan"), 0.9])
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.8) and got["std"] == pytest.approx(0.1)
    assert got["ci95_low"] == pytest.approx(0.8 - half) and got["ci95_high"] == pytest.approx(0.8 + half)
    assert sweep.seed_statistics([0.5])["std"] is None


def test_pavad_train_seeds_writes_mean_std_and_interval_columns(easy_data, tmp_path, capsys):
    train.main(["--config", f"tests/tiny_train_config.py:{easy_data}", "--workdir", str(tmp_path), "--seeds", "5",
                "--config.train.steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
                "--config.data.device_resident=True"])
    with open(tmp_path / sweep.RESULTS_CSV) as f:
        table = list(csv.DictReader(f))
    assert [int(r["seed"]) for r in table] == [2022 + i for i in range(5)]
    aucs = [float(r["best_auc"]) for r in table]
    for column in ("auc_mean", "auc_std", "auc_ci95_low", "auc_ci95_high", "ap_mean", "ap_std", "ap_ci95_low",
                   "ap_ci95_high"):
        assert len({r[column] for r in table}) == 1  # one configuration
    row = table[0]
    assert float(row["auc_mean"]) == pytest.approx(np.mean(aucs))
    assert float(row["auc_std"]) == pytest.approx(np.std(aucs, ddof=1))
    assert float(row["auc_ci95_low"]) <= float(row["auc_mean"]) <= float(row["auc_ci95_high"])
    assert "5 seeds: AUC" in capsys.readouterr().out
    assert (tmp_path / "seed_intervals.png").read_bytes()[:4] == b"\x89PNG"
