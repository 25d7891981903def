"""pavad-sweep: member expansion, grouping, equivalence with pavad-train, padded slots, resume, results."""
import csv
import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import xla_flags
from pavad_jax import distributed, engine, sweep, train
from pavad_jax.config_loader import ConfigError, load_config_file
from pavad_jax.losses import compute_loss
from train_fixtures import tiny_config, write_easy_dataset

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory):
    return write_easy_dataset(tmp_path_factory.mktemp("easy"))


def sweep_config(data_dir, sweep_fields: dict, steps: int = 4):
    config = tiny_config(data_dir, steps=steps)
    config.sweep = ml_collections.ConfigDict(sweep_fields)
    return config


# ------------------------------------------------------------------------------ definitions

def test_expand_grid_list_random():
    grid = sweep.expand_members(ml_collections.ConfigDict({"kind": "grid", "axes": {"lambda1": [0.0, 1.0],
                                                                                       "seed": [1, 2, 3]}}))
    assert len(grid) == 6 and grid[0] == {"lambda1": 0.0, "seed": 1} and grid[-1] == {"lambda1": 1.0, "seed": 3}
    listed = sweep.expand_members(ml_collections.ConfigDict({"kind": "list", "members": [{"tau": 0.2}, {"beta": 2.0}]}))
    assert listed == [{"tau": 0.2}, {"beta": 2.0}]
    spec = {"kind": "random", "count": 50, "random_seed": 3,
            "axes": {"learning_rate": ("loguniform", 1e-5, 1e-3), "a_slots": ("randint", 4, 8),
                     "lambda2": ("choice", [0.0, 0.1]), "beta": 1.5}}
    drawn = sweep.expand_members(ml_collections.ConfigDict(spec))
    assert drawn == sweep.expand_members(ml_collections.ConfigDict(spec))  # seeded
    lrs = np.array([m["learning_rate"] for m in drawn])
    assert lrs.min() >= 1e-5 and lrs.max() <= 1e-3 and len(set(lrs)) == 50
    assert {m["a_slots"] for m in drawn} <= set(range(4, 9)) and {m["lambda2"] for m in drawn} == {0.0, 0.1}
    assert {m["beta"] for m in drawn} == {1.5}


@pytest.mark.parametrize("fields, message", [
    ({"kind": "grid", "axes": {"lambda9": [1.0]}}, "unknown axis"),
    ({"kind": "grid", "axes": {"lambda1": []}}, "non-empty list"),
    ({"kind": "mesh"}, "'grid', 'list' or 'random'"),
    ({"kind": "random", "axes": {"tau": ("uniform", 0.1, 1.0)}}, "count >= 1"),
    ({"kind": "list", "members": [{"seed": 1}, {"lr": 1e-3}]}, "members[1]"),
])
def test_bad_sweep_definitions_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sweep.expand_members(ml_collections.ConfigDict(fields))


def test_groups_split_structure_pad_to_the_mesh_and_share_slot_padding(easy_data):
    base = tiny_config(easy_data)
    members = ([{"gv_lambda": v, "gv_learnable": False, "a_slots": 4 + i} for i, v in enumerate([0.1, 0.5, 1, 2, 3])]
               + [{"gv_lambda": 0.5, "gv_learnable": True, "a_slots": 3}])
    base.loss.gv.mode = "sample"
    groups = sweep.plan_groups(base, members, members_per_group=2, device_count=8)
    assert [g.members for g in groups] == [[0, 1], [2, 3], [4], [5]]
    assert [g.padding for g in groups] == [0, 0, 1, 0]  # chunks of one structure share one shape
    assert [g.config.model.a_slots for g in groups] == [8, 8, 8, 3]  # padded to the structure's largest K
    assert [bool(g.config.loss.gv.learnable) for g in groups] == [False, False, False, True]
    assert sweep.padded_group_size(13, 8) == 14 and sweep.padded_group_size(12, 8) == 12
    twelve = sweep.Group(0, list(range(12)), 0, base)
    assert dict(distributed.member_mesh(twelve.size, rows=8).shape) == {"members": 6, "data": 1}
    one = sweep.Group(0, [0], 0, base)
    assert dict(distributed.member_mesh(one.size, rows=8).shape) == {"members": 1, "data": 8}  # as pavad-train


def test_member_config_is_a_standalone_config(easy_data):
    base = tiny_config(easy_data)
    config = sweep.member_config(base, {"learning_rate": 3e-3, "seed": 7, "a_slots": 5, "abnormal_clips": 4})
    assert config.optim.learning_rate == 3e-3 and config.train.seed == 7 and config.model.a_slots == 5
    assert config.data.abnormal_clips == 4 and base.optim.learning_rate != 3e-3  # the base is untouched


# ------------------------------------------------------------------------------ the vmapped program

# The compile dominates; the small form takes one training step through the padded program, the full form three.
@pytest.mark.parametrize("steps", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_padded_slots_get_exactly_zero_gradient_and_stay_unchanged(easy_data, steps):
    base = tiny_config(easy_data)
    base.loss.weights.lambda2 = 1.0  # L_upd acts on the abnormal memory directly
    base.data.device_resident = True
    members = [{"a_slots": 8, "n_slots": 8, "seed": 0}, {"a_slots": 3, "n_slots": 5, "seed": 1}]
    group = sweep.plan_groups(base, members, 0, jax.device_count())[0]
    configs = [sweep.member_config(base, m) for m in members]
    mesh = distributed.member_mesh(group.size, rows=8)
    template = train.padded_template(group.config, 8, 8)
    graphdef = nnx.split(template, nnx.Param, ...)[0]
    state = engine.put_state(engine.stack_members([train.init_member(c, template) for c in configs]), mesh)
    data = train.DetectorData(group.config, mesh, train.pipeline.open_split(base.data, "train"))
    params1, rest1 = (engine.member_tree(tree, 1) for tree in (state.params, state.rest))
    weights1 = {k: v[1] for k, v in engine.member_tree(state.weights, slice(None)).items()}
    batch = data.sampler.sample(0)

    def loss(p):
        return compute_loss(nnx.merge(graphdef, p, rest1), batch, weights1, jax.random.key(1), config=base)[0]

    grads = jax.jit(jax.grad(loss))(params1)
    a_grad, n_grad = (np.asarray(grads["urdmu"][bank]["memory_block"][...]) for bank in ("a_memory", "n_memory"))
    assert np.all(a_grad[3:] == 0.0) and np.all(n_grad[5:] == 0.0)
    assert np.abs(a_grad[:3]).sum() > 0 and np.abs(n_grad[:5]).sum() > 0

    step = train.compiled_step(graphdef, group.config, data, mesh)
    before = jax.tree.map(np.asarray, engine.member_tree(state.params, slice(None)))
    for _ in range(steps):
        state, terms = step(state, None, data.sampler)
    after = engine.member_tree(state.params, slice(None))
    a_after = after["urdmu"]["a_memory"]["memory_block"][...]
    assert np.all(a_after[1, 3:] == 0.0) and np.all(after["urdmu"]["n_memory"]["memory_block"][...][1, 5:] == 0.0)
    assert not np.allclose(a_after[1, :3], before["urdmu"]["a_memory"]["memory_block"][...][1, :3])
    assert np.all(np.isfinite(np.asarray(terms["total"]))) and terms["total"].shape == (1, 2)


def _standalone_losses(config, workdir) -> list[float]:
    summary = train.train_and_evaluate(config, workdir)
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/total"] for r in rows if "train/total" in r]
    assert len(losses) == config.train.steps
    return losses, summary


# Every traced axis differs from the base in a compared member, and compared members are padded
# in each bank. Small: 2 members, one compared (padded in both banks), 2 steps; full: 3 members, two compared, 4 steps.
EQUIVALENCE = {
    "small": ([{"lambda1": 0.5, "learning_rate": 3e-3, "lambda2": 0.3, "weight_decay": 1e-3, "tau": 0.2,
                "lambda_da": 0.4, "lambda_dist": 0.1, "beta": 2.0, "seed": 5, "a_slots": 5, "n_slots": 4},
               {"seed": 6, "n_slots": 8, "a_slots": 8}], (0,), 2),
    "full": ([{"lambda1": 0.5, "learning_rate": 3e-3, "seed": 5, "a_slots": 5},
              {"lambda2": 0.3, "weight_decay": 1e-3, "tau": 0.2, "seed": 6, "n_slots": 8, "a_slots": 8},
              {"lambda_da": 0.4, "lambda_dist": 0.1, "beta": 2.0, "seed": 7, "a_slots": 6, "n_slots": 4}], (0, 2), 4),
}


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_a_member_trains_exactly_as_a_standalone_pavad_train(easy_data, tmp_path, size):
    members, compared, steps = EQUIVALENCE[size]
    config = sweep_config(easy_data, {"kind": "list", "members": members}, steps=steps)
    rows = sweep.run_sweep(config, tmp_path / "sweep")
    log = [json.loads(line) for line in (tmp_path / "sweep" / "groups" / "000" / "metrics.jsonl").read_text().splitlines()]
    for m in compared:
        standalone = sweep.member_config(sweep.base_of(config), members[m])
        expected, summary = _standalone_losses(standalone, tmp_path / f"standalone{m}")
        key = f"member/{m}/train/total"
        got = [r[key] for r in sorted(log, key=lambda r: r["step"]) if key in r]
        np.testing.assert_allclose(got, expected, rtol=1e-4)
        assert abs(rows[m]["best_auc"] - summary["auc"]) < 1e-3
    assert len({r["params_sha256"] for r in rows}) == len(members)


# Small: two groups of one member, 2 steps, a checkpoint every step; full: two groups of two, 4 steps.
@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_resume_after_preemption_matches_an_uninterrupted_sweep(easy_data, tmp_path, monkeypatch, size):
    seeds, per_group, steps = ([1], 1, 2) if size == "small" else ([1, 2], 2, 4)
    members = {"kind": "grid", "axes": {"lambda1": [0.0, 1.0], "seed": seeds}, "members_per_group": per_group}
    config = sweep_config(easy_data, members, steps=steps)
    config.train.checkpoint_every = steps // 2
    config.train.eval_every = steps // 2
    whole = sweep.run_sweep(config, tmp_path / "whole")

    def stop_after_first_checkpoint(self):
        """Asks to stop once the second group has a checkpoint (as a SIGTERM would)."""
        return pathlib.Path(tmp_path / "cut" / "groups" / "001" / "checkpoints").exists()

    monkeypatch.setattr(engine.Preemption, "requested", stop_after_first_checkpoint)
    assert sweep.run_sweep(config, tmp_path / "cut") == []
    progress = json.loads((tmp_path / "cut" / sweep.PROGRESS_JSON).read_text())
    assert list(progress["groups"]) == ["0"]  # group 0 finished, group 1 stopped half-way
    monkeypatch.undo()

    ran = []
    original = sweep.train_group
    monkeypatch.setattr(sweep, "train_group", lambda group, *a: ran.append(group.index) or original(group, *a))
    resumed = sweep.run_sweep(config, tmp_path / "cut")
    assert ran == [1]  # the finished group is not rerun
    assert [r["params_sha256"] for r in resumed] == [r["params_sha256"] for r in whole]
    assert [r["best_auc"] for r in resumed] == [r["best_auc"] for r in whole]

    changed = sweep_config(easy_data, {"kind": "grid", "axes": {"lambda1": [0.0, 2.0]}}, steps=steps)
    with pytest.raises(ConfigError, match="different sweep"):
        sweep.run_sweep(changed, tmp_path / "cut")


# Small: one seed (4 members); full: the runlocal 2 seeds (8 members), which also gives the
# per-seed plot (a plot per axis with more than one value).
@pytest.mark.parametrize("seeds", [[0], pytest.param([0, 1], marks=pytest.mark.slow)])
def test_runlocal_sweep_cli_writes_results_and_plots(tmp_path, seeds):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "pavad_jax.sweep", "--config", "configs/sweeps/synthetic_lambda.py:runlocal",
               "--workdir", str(run), f"--config.data.synthetic_root={tmp_path / 'cache'}",
               f"--config.sweep.axes.seed={seeds}",
               "--config.train.steps=20", "--config.train.eval_every=20", "--config.train.checkpoint_every=20"]
    env = os.environ | {"XLA_FLAGS": xla_flags(2)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    n = 4 * len(seeds)
    assert f"{n} members; best AUC" in done.stdout
    with open(run / sweep.RESULTS_CSV) as f:
        table = list(csv.DictReader(f))
    assert [int(r["member"]) for r in table] == list(range(n))
    assert {(float(r["lambda1"]), float(r["lambda2"])) for r in table} == {(a, b) for a in (0, 1) for b in (0, 0.1)}
    assert all(0.5 < float(r["best_auc"]) <= 1.0 for r in table)
    results = json.loads((run / sweep.RESULTS_JSON).read_text())
    assert results["best"]["best_auc"] == max(float(r["best_auc"]) for r in table)
    plots = ["auc_vs_lambda1.png", "auc_vs_lambda2.png", "auc_heatmap_lambda1_lambda2.png"]
    for name in plots + (["auc_vs_seed.png"] if len(seeds) > 1 else []):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name, arg, count", [("synthetic_lambda", None, 36), ("synthetic_lambda", "runlocal", 8),
                                               ("pavad_table5", None, 12), ("pavad_table5", "ucf", 12),
                                               ("pavad_table6", None, 18), ("gvvad_lambda", None, 18),
                                               ("gvvad_lambda", "runlocal", 6)])
def test_sweep_configs_expand_and_group(name, arg, count):
    config = load_config_file(REPO / "configs" / "sweeps" / f"{name}.py", arg)
    members = sweep.expand_members(config.sweep)
    assert len(members) == count
    groups = sweep.plan_groups(sweep.base_of(config), members, config.sweep.members_per_group, 8)
    assert sorted(i for g in groups for i in g.members) == list(range(count))
    if name == "gvvad_lambda":  # on LAP; the learnable lambda compiles apart from the fixed ones
        assert [bool(g.config.loss.gv.learnable) for g in groups] == [False, True]
        assert {g.config.model.name for g in groups} == {"lap"}
    if name == "pavad_table6":
        assert sorted(g.config.data.abnormal_clips for g in groups) == [14, 35, 70, 105, 140, 175]


def test_abnormal_clips_keeps_a_fixed_subset_of_the_abnormal_stream(easy_data):
    config = sweep.member_config(tiny_config(easy_data), {"abnormal_clips": 3})
    config.data.device_resident = True
    mesh = distributed.make_mesh(1, 1)
    shards = train.pipeline.open_split(config.data, "train")
    first, again = (train.DetectorData(config, mesh, shards).sampler for _ in range(2))
    # One crop per training video: a sample per video; the normal stream is untouched.
    assert first.unit_row[1].shape == (3,) and first.unit_row[0].shape == (8,)
    np.testing.assert_array_equal(first.unit_row[1], again.unit_row[1])
    too_many = sweep.member_config(config, {"abnormal_clips": 9})
    with pytest.raises(ConfigError, match="abnormal_clips = 9.*only 8"):
        train.DetectorData(too_many, mesh, shards)
    # The grain path keeps the same subset: the same batches as the device-resident path.
    streamed = sweep.member_config(config, {"abnormal_clips": 3})
    streamed.data.device_resident = False
    grain = train.DetectorData(streamed, mesh, shards)
    sampled = train.jax.jit(lambda s: s.sample(0))(first)
    np.testing.assert_array_equal(np.asarray(grain.next()["features"])[0], np.asarray(sampled["features"]))


# Two structures are two programs at any size: the small form evaluates in one bucket (one
# scoring program per group) instead of two; the test videos are at most 50 segments long.
@pytest.mark.parametrize("eval_buckets", [(64,), pytest.param((16, 64), marks=pytest.mark.slow)])
def test_structural_axes_run_as_their_own_groups(easy_data, tmp_path, eval_buckets):
    config = sweep_config(easy_data, {"kind": "list", "members": [
        {"gv_learnable": True, "abnormal_clips": 3}, {"gv_learnable": False, "gv_lambda": 0.25}]}, steps=2)
    config.data.eval_buckets = eval_buckets
    config.loss.gv.mode = "sample"
    config.data.device_resident = True
    rows = sweep.run_sweep(config, tmp_path)
    assert [(r["group"], r["gv_learnable"], r["abnormal_clips"]) for r in rows] == [(0, True, 3), (1, False, 0)]
    assert all(r["best_auc"] is not None for r in rows)
    learned = [json.loads(line) for line in (tmp_path / "groups" / "000" / "metrics.jsonl").read_text().splitlines()]
    fixed = [json.loads(line) for line in (tmp_path / "groups" / "001" / "metrics.jsonl").read_text().splitlines()]
    learned = [r["member/0/train/gv_lambda"] for r in learned if "member/0/train/gv_lambda" in r]
    assert learned[-1] != pytest.approx(0.5, abs=1e-7)  # the learnable lambda moved
    assert {r["member/1/train/gv_lambda"] for r in fixed if "member/1/train/gv_lambda" in r} == {0.25}
