"""The one engine: train and sweep are its 1- and M-member cases, the finite-loss guard, the schedule."""
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pavad_jax import checkpoint, config_checks, engine, evaluate, score, sweep, train
from pavad_jax.config_loader import ConfigError
from pavad_jax.shards import ShardSet, VideoRecord, write_shard_set
from train_fixtures import tiny_config, write_easy_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_easy_dataset(tmp_path_factory.mktemp("easy"))


@pytest.mark.parametrize("device_resident", [True, False])
def test_a_one_member_sweep_ends_with_the_parameters_of_pavad_train(data_dir, tmp_path, device_resident):
    config = tiny_config(data_dir, steps=4)
    config.data.device_resident = device_resident
    config.train.eval_every = 2
    summary = train.train_and_evaluate(config, tmp_path / "train")
    sweep_config = tiny_config(data_dir, steps=4)
    sweep_config.data.device_resident = device_resident
    sweep_config.train.eval_every = 2
    sweep_config.sweep = ml_collections.ConfigDict({"kind": "list", "members": [{"seed": int(config.train.seed)}]})
    (row,) = sweep.run_sweep(sweep_config, tmp_path / "sweep")
    assert row["params_sha256"] == summary["params_sha256"]
    assert row["best_auc"] == summary["auc"] and row["best_step"] == summary["best_step"]
    # The member's exports are checkpoints like pavad-train's.
    member = tmp_path / "sweep" / checkpoint.MEMBERS_DIR / "000"
    detector, _, _, _ = checkpoint.resolve_model(member / "last")
    trained, _, _, _ = checkpoint.resolve_model(tmp_path / "train" / "last")
    params = lambda d: engine.params_sha256(train.nnx.split(d, train.nnx.Param, ...)[1])
    assert params(detector) == params(trained) == summary["params_sha256"]


def _dataset_with_one_huge_video(root: pathlib.Path) -> pathlib.Path:
    """The easy dataset, with one normal training video whose features overflow float32 in the model."""
    write_easy_dataset(root)
    records = list(ShardSet(root / "train"))
    poisoned = [VideoRecord(r.id, r.features * 1e36 if r.id == "n3" else r.features, r.label, r.source, r.stream,
                            r.anomaly_class, r.num_frames, r.frame_labels) for r in records]
    write_shard_set(root / "train", poisoned, dtype="float32", overwrite=True)
    return root


def _first_step_with(data_config, video_id: str, steps: int) -> int:
    """The first training step whose batch holds `video_id` (batches depend on data.seed only)."""
    shards = train.pipeline.open_split(data_config, "train")
    iterator = train.pipeline.make_train_iterator(data_config, shards=shards)
    huge = np.max(np.abs(shards[[e["id"] for e in shards.entries].index(video_id)].features))
    for step in range(1, steps + 1):
        if np.max(np.abs(next(iterator)["features"])) >= huge / 10:
            return step
    raise AssertionError(f"{video_id} is not drawn in {steps} steps")


def test_a_diverging_run_stops_naming_the_step_and_terms_and_keeps_the_last_good_checkpoint(tmp_path):
    data_dir = _dataset_with_one_huge_video(tmp_path / "data")
    config = tiny_config(data_dir, steps=12)
    config.data.device_resident = False
    config.train.checkpoint_every = 1
    for seed in range(20):  # a data order that reaches the huge video after a few good steps
        config.data.seed = seed
        bad_step = _first_step_with(config.data, "n3", 12)
        if bad_step >= 3:
            break
    workdir = tmp_path / "run"
    with pytest.raises(engine.TrainingDiverged, match=rf"diverged at step {bad_step}: non-finite .*total") as error:
        train.train_and_evaluate(config, workdir)
    assert "nothing after it was saved" in str(error.value)
    checkpoints = checkpoint.TrainCheckpoints(workdir)
    assert checkpoints.latest_step() == bad_step - 1
    params = checkpoints.restore_fields(bad_step - 1, {"params": _abstract_params(config)})["params"]
    checkpoints.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in train.jax.tree.leaves(params))
    assert not (workdir / train.SUMMARY).exists()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/total"] for r in rows if r["step"] == bad_step and "train/total" in r] == [None]

    # The command line says the same in one line and exits non-zero.
    with pytest.raises(SystemExit, match=rf"^pavad-train: training diverged at step {bad_step}"):
        train.main(["--config", str(pathlib.Path(__file__).parent / "tiny_train_config.py") + f":{data_dir}",
                    "--workdir", str(tmp_path / "cli"), f"--config.data.seed={config.data.seed}",
                    "--config.data.device_resident=false", "--config.train.steps=12"])


def _abstract_params(config):
    detector = train.build_detector(config.model, config.loss, seed=0)
    params = train.nnx.split(detector, train.nnx.Param, ...)[1]
    return train.jax.tree.map(lambda x: train.jax.ShapeDtypeStruct((1, *x.shape), x.dtype), params)


def test_a_sweep_member_that_diverges_is_frozen_and_reported_while_the_others_train(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=2)  # lr 1e30 goes non-finite at once
    config.sweep = ml_collections.ConfigDict({"kind": "list", "members": [
        {"learning_rate": 1e-3}, {"learning_rate": 1e30}, {"learning_rate": 1e-3, "seed": 3}]})
    rows = sweep.run_sweep(config, tmp_path)
    assert rows[1]["diverged_at"] is not None and rows[0]["diverged_at"] is None and rows[2]["diverged_at"] is None
    assert rows[0]["best_auc"] is not None and rows[2]["best_auc"] is not None


def test_intervals_that_are_not_multiples_of_the_dispatch_are_an_error_naming_the_field(data_dir):
    config = tiny_config(data_dir, steps=30)
    config.train.steps_per_dispatch = 3
    config.train.log_every = config.train.checkpoint_every = 3
    config.train.eval_every = 10
    with pytest.raises(ConfigError, match=r"config.train.eval_every = 10: must be a positive multiple of "
                                          r"train.steps_per_dispatch = 3"):
        config_checks.check_training_config(config)
    config.train.eval_every, config.train.log_every = 9, 4
    with pytest.raises(ConfigError, match="config.train.log_every = 4"):
        engine.Schedule.from_config(config.train)


def test_the_guard_keeps_the_state_of_a_non_finite_step():
    """make_update on a quadratic: a NaN batch leaves params and optimiser state as they were."""
    tx = engine.make_optimizer(ml_collections.ConfigDict(dict(learning_rate=0.1, weight_decay=0.0, b1=0.9,
                                                              b2=0.999, eps=1e-8)))

    def loss_fn(params, rest, batch, weights, key, step):
        loss = jnp.sum((params["w"] - batch) ** 2)
        return loss, ({"fit": loss}, rest)

    update = engine.make_update(loss_fn, tx)
    params = {"w": jnp.ones(3)}
    state = (params, {}, tx.init(params), jnp.uint32(0), {}, jnp.int32(-1))
    good = update(*state, jnp.int32(0), jnp.zeros(3))
    assert int(good[3]) == -1 and not np.allclose(good[0]["w"], 1.0)
    bad = update(*good[:3], jnp.uint32(0), {}, good[3], jnp.int32(1), jnp.asarray([0.0, np.nan, 0.0]))
    assert int(bad[3]) == 2  # the step that went non-finite, numbered as logged (step index 1 + 1)
    np.testing.assert_array_equal(bad[0]["w"], good[0]["w"])
    for kept, before in zip(jax.tree.leaves(bad[2]), jax.tree.leaves(good[2])):
        np.testing.assert_array_equal(kept, before)
    after = update(*bad[:3], jnp.uint32(0), {}, bad[3], jnp.int32(2), jnp.zeros(3))
    assert int(after[3]) == 2 and np.array_equal(after[0]["w"], good[0]["w"])  # stays frozen
    assert set(good[4]) == {"total", "fit", "grad_norm"}


def test_pavad_score_and_pavad_eval_give_the_same_segment_scores(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=2)
    train.train_and_evaluate(config, tmp_path / "run")
    evaluate.main(["--checkpoint", str(tmp_path / "run" / "best"), "--data", str(data_dir),
                   "--output", str(tmp_path / "eval"), "--videos", "0"])
    shards = ShardSet(data_dir / "test")
    with np.load(tmp_path / "eval" / "scores.npz") as evaluated:
        for i in range(len(shards)):
            record = shards[i]
            np.save(tmp_path / "video.npy", record.features)
            assert score.main(["--checkpoint", str(tmp_path / "run"), "--features", str(tmp_path / "video.npy"),
                               "--output", str(tmp_path / "scores.npy")]) == 0
            np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), evaluated[record.id], rtol=0, atol=1e-6)
