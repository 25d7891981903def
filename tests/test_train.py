"""pavad-train and pavad-eval end to end on a tiny easy dataset."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx
from sklearn.metrics import roc_auc_score

from pavad_jax import config_checks, distributed, engine, evaluate, train
from conftest import xla_flags
from train_fixtures import tiny_config, write_easy_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_easy_dataset(tmp_path_factory.mktemp("easy"))


def read_losses(workdir: pathlib.Path) -> np.ndarray:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["train/total"] for r in rows if "train/total" in r}
    return np.asarray([by_step[s] for s in sorted(by_step)])


def test_one_training_step_end_to_end(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=1)
    summary = train.train_and_evaluate(config, tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert (tmp_path / "loss_terms.png").stat().st_size > 0  # the loss curves, beside the summary
    for field in ("final_step", "best_step", "auc", "ap_pr_trapezoid", "average_precision", "per_class_auc",
                  "wall_s", "steps_per_s", "params_sha256"):
        assert field in summary, field
    assert summary["final_step"] == 1 and summary["best_step"] == 1
    assert 0.0 <= summary["auc"] <= 1.0
    assert len(summary["params_sha256"]) == 64
    assert list(summary["per_class_auc"]) == ["Fight"]
    assert (tmp_path / "best" / "config.json").is_file() and (tmp_path / "last" / "config.json").is_file()
    assert len(read_losses(tmp_path)) == 1
    # TensorBoard's own reader reads the scalars (written without TensorFlow).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/total", "train/grad_norm", "eval/auc"} <= set(events.Tags()["scalars"])
    assert events.Scalars("eval/auc")[0].value == pytest.approx(summary["auc"], abs=1e-6)


def test_loss_falls_over_50_steps(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=50)
    config.optim.learning_rate = 1e-3
    config.train.steps_per_dispatch = 10  # also covers several steps per dispatch (lax.scan)
    config.train.log_every = 10
    train.train_and_evaluate(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    anomaly = [r["train/anomaly"] for r in rows if "train/anomaly" in r]
    totals = read_losses(tmp_path)
    assert len(totals) == 50  # every step of every dispatch is logged
    at_tens = totals[9::10]
    assert at_tens[-1] < 0.8 * at_tens[0], at_tens
    assert np.mean(anomaly[-10:]) < np.mean(anomaly[:10]), anomaly


@pytest.mark.parametrize("device_resident", [True, False])
def test_one_and_four_devices_give_the_same_trajectory(data_dir, tmp_path, device_resident):
    losses = {}
    for devices in (1, 4):
        config = tiny_config(data_dir, steps=3)  # 3 steps compare trajectories; compiling is the cost
        config.data.device_resident = device_resident
        config.train.num_devices = devices
        summary = train.train_and_evaluate(config, tmp_path / f"d{devices}")
        assert summary["devices"] == devices
        losses[devices] = read_losses(tmp_path / f"d{devices}")
    np.testing.assert_allclose(losses[4], losses[1], rtol=1e-5)


def test_device_resident_is_a_speed_choice_not_a_change_of_results(data_dir, tmp_path):
    # Both paths feed the same batches (pipeline tests), so the same run trains the same way.
    summaries, losses = {}, {}
    for resident in (True, False):
        config = tiny_config(data_dir, steps=6)
        config.data.device_resident = resident
        config.train.num_devices = 1
        summaries[resident] = train.train_and_evaluate(config, tmp_path / str(resident))
        losses[resident] = read_losses(tmp_path / str(resident))
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-6)
    assert summaries[True]["best_step"] == summaries[False]["best_step"]
    assert summaries[True]["auc"] == pytest.approx(summaries[False]["auc"], abs=1e-6)


@pytest.mark.parametrize("device_resident", [True, False])
def test_resumed_run_equals_uninterrupted_run(data_dir, tmp_path, device_resident):
    def run(workdir, steps):
        config = tiny_config(data_dir, steps=steps)
        config.data.device_resident = device_resident
        config.train.checkpoint_every = 3
        config.train.eval_every = 3
        return train.train_and_evaluate(config, workdir)

    uninterrupted = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)  # stops at step 3 with a checkpoint, as a killed run would
    resumed = run(tmp_path / "b", 6)
    assert resumed["params_sha256"] == uninterrupted["params_sha256"]
    assert resumed["best_step"] == uninterrupted["best_step"]


def test_train_step_compiles_once(data_dir):
    config = tiny_config(data_dir)
    config.data.device_resident = False
    mesh = distributed.make_mesh(1, 1)
    shards = train.pipeline.open_split(config.data, "train")
    data = train.DetectorData(config, mesh, shards)
    template = train.build_detector(config.model, config.loss, seed=0)
    graphdef = train.nnx.split(template, train.nnx.Param, ...)[0]
    state = engine.put_state(engine.stack_members([train.init_member(config, template)]), mesh)
    step_fn = train.compiled_step(graphdef, config, data, mesh)
    for _ in range(3):
        state, _ = step_fn(state, data.next(), data.sampler)
    assert step_fn._cache_size() == 1
    assert int(state.step) == 3


def test_evaluation_equals_sklearn_on_concatenated_frames(data_dir):
    config = tiny_config(data_dir)
    config.data.eval_concurrency = 2  # batches scored 2 at a time, on threads
    config.data.eval_batch_size, config.data.eval_buckets = 1, (16,)  # rows of their own: several batches
    mesh = distributed.make_mesh(1, 2)
    detector = train.build_detector(config.model, config.loss, seed=3)
    graphdef, params, rest = evaluate.stacked_model(detector)
    evaluator = evaluate.Evaluator(config.data, mesh, graphdef)
    assert evaluator.concurrency == 2 and len(evaluator.batches) > 2
    scores = evaluator.scores(params, rest)[0]
    result = evaluator.results([scores])[0]

    # Direct: one video at a time, unpadded, through the model; frames = segments repeated 16x.
    # (Jitted: op by op, every op of every video length is a compilation of its own.)
    direct = jax.jit(lambda state, features: nnx.merge(*state).scores(features))
    state = nnx.split(detector)
    shards = train.pipeline.open_split(config.data, "test")
    direct_scores, labels = [], []
    for i in range(len(shards)):
        record = shards[i]
        s = np.asarray(direct(state, record.features[None].astype(np.float32)))[0]
        np.testing.assert_allclose(scores[i], s, atol=1e-5)
        direct_scores.append(np.repeat(s, 16))
        labels.append(record.frame_labels)
    y, frames = np.concatenate(labels), np.concatenate(direct_scores)
    assert result["auc"] == pytest.approx(roc_auc_score(y, frames), abs=1e-6)
    assert result["frames"] == y.size


@pytest.mark.parametrize("field, value, message", [
    ("loss.weights.lambda1", -1.0, "config.loss.weights.lambda1 = -1.0: must be >= 0"),
    ("model.a_slots", 0, "config.model.a_slots = 0"),
    ("data.segments", 0, "config.data.segments = 0"),
    ("model.feature_dim", 32, "config.model.feature_dim = 32: the shards in"),
    ("data.dir", "/nonexistent/data", "config.data.dir = '/nonexistent/data': no such folder"),
])
def test_bad_config_stops_before_compilation_naming_the_field(data_dir, tmp_path, field, value, message,
                                                              monkeypatch):
    config = tiny_config(data_dir)
    section, name = field.rsplit(".", 1)
    node = config
    for part in section.split("."):
        node = node[part]
    node[name] = value

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled before the config was checked")

    monkeypatch.setattr(train.jax, "jit", no_compiling)
    with pytest.raises(config_checks.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_pavad_eval_writes_metrics_roc_and_traces(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=2)
    config.train.eval_every = 1
    summary = train.train_and_evaluate(config, tmp_path)
    evaluate.main(["--workdir", str(tmp_path), "--checkpoint", "best", "--videos", "2"])
    out = tmp_path / "eval" / "best"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auc"] == pytest.approx(summary["auc"], abs=1e-6)
    assert (out / "roc.png").stat().st_size > 1000
    assert len(list(out.glob("trace_*.png"))) == 2
    with np.load(out / "scores.npz") as saved:
        assert sorted(saved.files) == sorted(train.pipeline.open_split(config.data, "test").entries[i]["id"]
                                             for i in range(6))
    # A saved step restores from the Orbax training checkpoint.
    evaluate.main(["--workdir", str(tmp_path), "--checkpoint", "2", "--videos", "0"])
    last = json.loads((tmp_path / "eval" / "2" / "metrics.json").read_text())
    assert last["auc"] == pytest.approx(summary["final_auc"], abs=1e-6)


# ------------------------------------------------------------------------------ multi-process

_WORKER = """
import os, sys, json
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from pavad_jax import distributed, train
from train_fixtures import tiny_config
distributed.initialize({coordinator!r}, {processes}, {index})
config = tiny_config({data!r}, steps={steps})
config.data.device_resident = {resident}
config.train.checkpoint_every = {checkpoint_every}
config.train.eval_every = {eval_every}
summary = train.train_and_evaluate(config, {workdir!r})
print("SUMMARY", json.dumps(summary))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_processes(data_dir, workdir, processes, devices_each, resident, steps=4, checkpoint_every=4,
                     eval_every=4):
    coordinator = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices_each))
    return [subprocess.Popen(
        [sys.executable, "-c", _WORKER.format(tests=str(REPO / "tests"), coordinator=coordinator,
                                              processes=processes, index=i, data=str(data_dir),
                                              workdir=str(workdir), resident=resident, steps=steps,
                                              checkpoint_every=checkpoint_every, eval_every=eval_every)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]


def _summaries(procs) -> list[dict]:
    """Waits for every process; each one's printed summary."""
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.split("SUMMARY", 1)[1]) for out, _ in outputs]


@pytest.mark.parametrize("resident", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_two_processes_with_two_devices_equal_one_process_with_four(data_dir, tmp_path, resident):
    # Both runs at once: most of each is interpreter start-up and compilation, one core each.
    one = _start_processes(data_dir, tmp_path / "one", 1, 4, resident)
    two = _start_processes(data_dir, tmp_path / "two", 2, 2, resident)
    _summaries(one), _summaries(two)
    np.testing.assert_allclose(read_losses(tmp_path / "two"), read_losses(tmp_path / "one"), rtol=1e-5)


def test_sigterm_to_one_process_saves_the_same_step_on_every_process_and_resumes(data_dir, tmp_path):
    """Schedulers send SIGTERM before the time limit; it may reach one process of a multi-host run."""
    # The signal goes out when the first checkpoint (step 5) is being written: 15 steps and 3 saves
    # are left, ~3 s on an idle machine; the signal stops the run within ~1.5 s.
    run = dict(processes=2, devices_each=2, resident=False, steps=20, checkpoint_every=5, eval_every=10)
    whole = _summaries(_start_processes(data_dir, tmp_path / "whole", **run))

    workdir = tmp_path / "cut"
    procs = _start_processes(data_dir, workdir, **run)
    deadline = time.time() + 300
    while not list((workdir / "checkpoints").glob("[0-9]*")) and time.time() < deadline:
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only
    cut = _summaries(procs)
    assert "preempted_at_step" in cut[0], "the run finished before the signal: lengthen it"
    assert cut[0] == cut[1]  # both processes stopped after saving the same step
    step = cut[0]["preempted_at_step"]
    assert 0 < step < run["steps"]
    assert max(int(p.name) for p in (workdir / "checkpoints").glob("[0-9]*")) == step

    resumed = _summaries(_start_processes(data_dir, workdir, **run))
    assert resumed[0]["params_sha256"] == resumed[1]["params_sha256"] == whole[0]["params_sha256"]


def test_sigkill_then_rerun_gives_the_uninterrupted_parameters(data_dir, tmp_path):
    """The acceptance check: kill -9 at a random moment, rerun the same command."""
    args = ["--config", str(REPO / "tests" / "tiny_train_config.py") + f":{data_dir}",
            "--config.train.steps=60", "--config.train.checkpoint_every=5", "--config.train.eval_every=20"]
    env = dict(os.environ, XLA_FLAGS=xla_flags(1))
    cmd = [sys.executable, "-m", "pavad_jax.train", *args]
    subprocess.run(cmd + ["--workdir", str(tmp_path / "whole")], env=env, check=True, capture_output=True)
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--workdir", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((killed / "checkpoints").glob("[0-9]*")) and time.time() < deadline:
        time.sleep(0.2)
    # A random moment after the first checkpoint (the run ends ~2.6 s after it on an idle 2-core
    # Xeon with the test run's compilation cache warm; at 20 steps it ended after 1.1 s).
    time.sleep(np.random.default_rng().uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before the kill: lengthen it"
    subprocess.run(cmd + ["--workdir", str(killed)], env=env, check=True, capture_output=True)
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["params_sha256"] == whole["params_sha256"]
