"""Training configs: the reference settings they claim, and the XD-Violence runlocal set they build."""
import importlib.util
import pathlib

import numpy as np
import pytest

from pavad_jax.config_checks import check_training_config
from pavad_jax.data import pipeline, synthetic
from pavad_jax.shards import ShardSet

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SELECT_BY = ("auc", "ap", "ap_trapezoid")


def load(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("name", ["synthetic.py", "ucf.py", "sht.py", "urdmu_ucf.py", "gvvad_ucf.py", "xd.py"])
def test_every_training_config_samples_crops_and_selects_by_a_known_metric(name):
    config = load(name)
    assert config.data.sample_unit == "crop"  # the reference's sampling unit
    assert config.train.select_by in SELECT_BY
    assert not config.model.quirks.anchor_at_abnormal_index  # the fixed reference code by default


@pytest.mark.parametrize("name, model", [("gvvad_rtfm_ucf.py", "rtfm"), ("gvvad_lap_ucf.py", "lap")])
def test_gvvad_detector_configs_have_the_official_settings(name, model):
    config = load(name)
    assert config.model.name == model and config.model.feature_dim == 768
    assert (config.data.segments, config.data.sample_unit) == (64, "all_crops")  # T = 64, every crop
    assert (config.data.batch.normal, config.data.batch.abnormal, config.data.batch.pseudo_normal) == (32, 32, 0)
    assert (config.optim.learning_rate, config.optim.weight_decay, config.train.steps) == (1e-3, 5e-3, 1000)
    assert (config.train.eval_every, config.train.eval_after) == (5, 50)
    assert [load(name, f"seed{s}").train.seed for s in (0, 228, 3407)] == [0, 228, 3407]
    assert config.loss.gv.mode == "official" and config.loss.weights.gv_lambda == 0.5
    assert config.loss.gv.learnable == (model == "lap")  # runGV.sh: --Learnable_VLR for LAP only
    assert config.loss.sparsity_smoothness == (model == "lap")  # --extra_loss for LAP only
    assert load(name, "runlocal").train.steps < 10


def test_xd_config_has_the_reference_settings():
    config = load("xd.py")
    assert config.train.select_by == "ap_trapezoid"  # xd_main.py keeps the best auc(recall, precision)
    assert (config.data.batch.normal, config.data.batch.abnormal, config.data.batch.pseudo_normal) == (64, 64, 0)
    assert config.data.segments == 200 and config.data.abnormal_source == "real"
    assert (config.optim.learning_rate, config.optim.weight_decay) == (1e-4, 5e-5)
    assert (config.train.steps, config.train.eval_every, config.train.seed) == (3000, 10, 2022)
    assert config.loss.weights.lambda1 == config.loss.weights.lambda2 == 0.0  # UR-DMU's loss alone
    assert not config.loss.darm.usage_update and not config.loss.darm.domain_alignment
    assert load("xd.py", "first_commit").model.quirks.anchor_at_abnormal_index
    with pytest.raises(ValueError, match="unknown config variant"):
        load("xd.py", "runfast")


def test_urdmu_ucf_says_which_code_made_its_number():
    doc = (CONFIGS / "urdmu_ucf.py").read_text()
    assert "0.8697" in doc and "e0ac5f3" in doc and "152c4dc" in doc
    assert load("urdmu_ucf.py", "first_commit").model.quirks.anchor_at_abnormal_index


def test_xd_runlocal_builds_an_xd_shaped_set_and_keeps_best_by_ap(tmp_path):
    config = load("xd.py", "runlocal")
    assert config.data.synthetic == "xd_small" and config.train.select_by == "ap_trapezoid"
    data_dir = tmp_path / "xd"
    synthetic.build(data_dir, config.data.synthetic)
    check_training_config(config, data_dir)
    train, test = ShardSet(data_dir / "train"), ShardSet(data_dir / "test")
    assert {e["crops"] for e in train.entries} == {e["crops"] for e in test.entries} == {5}  # XD's 5 crops
    assert {e["label"] for e in test.entries} == {0, 1}
    config.data.dir = str(data_dir)
    streams = pipeline.select_streams(train, config.data)
    assert [len(s) for s in streams] == [24, 20, 0]  # real normals, real abnormals, no pseudo-normal stream
    assert all(train.entries[i]["source"] == "real" for i in streams[1])
    iterator = pipeline.make_train_iterator(config.data, shards=train)
    for batch in (next(iterator) for _ in range(2)):
        assert batch["features"].shape == (8, 32, 64)
        np.testing.assert_array_equal(batch["label"], [0] * 4 + [1] * 4)
        np.testing.assert_array_equal(batch["synthetic"], 0)
