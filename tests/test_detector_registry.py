"""The detector registry: RTFM and LAP train through pavad-train's engine on shards with caption
embeddings (both data paths), export their name, load back, and the evaluator's packed rows
score every test video as a direct forward on that video alone."""
import json
import pathlib

import jax
import numpy as np
import pytest

from pavad_jax import checkpoint, distributed, shards, train
from pavad_jax.config_loader import ConfigError, load_config
from pavad_jax.data import pipeline
from pavad_jax.evaluate import Evaluator, stacked_model
from pavad_jax.models import registry
from pavad_jax.shards import VideoRecord, write_shard_set

REPO = pathlib.Path(__file__).resolve().parents[1]
DIM = TEXT = 16
CROPS = 2


def _video(rng, t, abnormal):
    x = np.abs(rng.normal(0.5, 0.2, (CROPS, t, DIM))).astype(np.float32)
    if abnormal:
        x[:, t // 3:t // 3 + 4, :DIM // 2] += 1.5
    return x


def _record(rng, name, t, label, source, labels=None):
    captions = rng.normal(size=(t, TEXT)).astype(np.float32)
    return VideoRecord(name, _video(rng, t, label), label, source, "abnormal" if label else "normal",
                       "Fighting" if label else "normal", 16 * t, labels, {"caption_embedding": captions})


def write_caption_dataset(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """train/ (real and synthetic, both streams), test/ (5 videos of several lengths), prompt_bank.npy."""
    rng = np.random.default_rng(seed)
    train_records = [_record(rng, f"{'s' if i % 2 else 'r'}{label}{i}", int(rng.integers(6, 40)), label,
                             "pseudo" if i % 2 else "real") for label in (0, 1) for i in range(4)]
    write_shard_set(root / "train", train_records, dtype="float32")
    test_records = []
    for i, t in enumerate((7, 13, 21, 30, 45)):
        labels = np.zeros(16 * t, np.uint8)
        if i % 2:
            labels[16 * (t // 3):16 * (t // 3 + 4)] = 1
        test_records.append(_record(rng, f"t{i}", t, i % 2, "real", labels))
    write_shard_set(root / "test", test_records, dtype="float32")
    np.save(root / registry.PROMPT_BANK_FILE, rng.normal(size=(26, TEXT)).astype(np.float32))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_caption_dataset(tmp_path_factory.mktemp("captions"))


def test_caption_fields_round_trip_and_validate(dataset, tmp_path):
    manifest = shards.load_manifest(dataset / "test")
    assert manifest["segment_fields"] == {"caption_embedding": TEXT}
    assert shards.validate(dataset) == []
    record = shards.ShardSet(dataset / "test")[2]
    assert record.segment_fields["caption_embedding"].shape == (21, TEXT)
    bad = _record(np.random.default_rng(1), "bad", 9, 0, "real")
    bad.segment_fields["caption_embedding"] = bad.segment_fields["caption_embedding"][:5]
    with pytest.raises(shards.ShardError, match=r"field 'caption_embedding' has shape \(5, 16\)"):
        write_shard_set(tmp_path / "bad", [bad])
    plain = _record(np.random.default_rng(1), "plain", 9, 0, "real")
    plain.segment_fields = {}
    write_shard_set(tmp_path / "plain" / "train", [plain])
    with pytest.raises(ValueError, match="segment_fields' lacks 'caption_embedding'"):
        pipeline.make_eval_batches(load_config("configs/gvvad_lap_ucf.py:runlocal").data,
                                   shards=shards.ShardSet(tmp_path / "plain" / "train"), fields=("caption_embedding",))


@pytest.mark.parametrize("resident", [False, True])
def test_all_crop_batches_carry_the_captions_alike_on_both_paths(dataset, resident):
    config = load_config("configs/gvvad_lap_ucf.py:runlocal")
    config.data.dir = str(dataset)
    split = pipeline.open_split(config.data, "train")
    fields = registry.extra_fields(config)
    grain_batch = next(pipeline.make_train_iterator(config.data, shards=split, fields=fields))
    assert grain_batch["features"].shape == (4, CROPS, 32, DIM)
    assert grain_batch["caption_embedding"].shape == (4, 32, TEXT)
    if resident:
        sampler = pipeline.DeviceResidentSampler.from_config(config.data, shards=split, fields=fields)
        device_batch = jax.jit(lambda s: s.sample(0))(sampler)
        for key, value in grain_batch.items():
            np.testing.assert_array_equal(np.asarray(device_batch[key]), value, err_msg=key)


def _train(config_spec, dataset, workdir, **overrides):
    config = load_config(config_spec)
    config.data.dir = str(dataset)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    summary = train.train_and_evaluate(config, workdir)
    return config, summary


@pytest.mark.parametrize("spec,resident", [("configs/gvvad_rtfm_ucf.py:runlocal", "true"),
                                           ("configs/gvvad_lap_ucf.py:runlocal", "false")])
def test_trained_rtfm_and_lap_export_load_and_evaluate_as_a_direct_forward(dataset, tmp_path, spec, resident):
    config, summary = _train(spec, dataset, tmp_path / "run", **{
        "data.device_resident": resident, "train.steps": 2, "train.checkpoint_every": 2})
    assert summary["final_step"] == 2 and 0.0 <= summary["auc"] <= 1.0
    name = config.model.name
    assert json.loads((tmp_path / "run" / "last" / "config.json").read_text())["model"]["name"] == name
    model, loaded = checkpoint.load_model(tmp_path / "run" / "last")
    assert type(model).__name__ == name.upper() and loaded.model.name == name
    # The training's BatchNorm statistics came along (they moved from their initial 0 / 1).
    assert not np.allclose(np.asarray(model.mtn.bn_1.mean[...]), 0.0)

    data = config.data.copy_and_resolve_references()
    data.dir = str(dataset)
    graphdef, params, rest = stacked_model(model)
    evaluator = Evaluator(data, distributed.make_mesh(1, 1), graphdef, extra_fields=registry.extra_fields(config),
                          progress=False)
    assert any(len(row.videos) > 1 for rows in evaluator.batches.plan for row in rows if row)  # packed rows
    scores = evaluator.scores(params, rest)[0]
    test = shards.ShardSet(dataset / "test")
    for i, record in enumerate(test):
        extras = {k: record.segment_fields[k][None] for k in registry.extra_fields(config)}
        direct = np.asarray(model.scores(record.features[None], **extras))[0]
        np.testing.assert_allclose(scores[i], direct, rtol=1e-5, atol=1e-6, err_msg=record.id)
    # pavad-score's path (one video in a row of its bucket) gives the same scores.
    from pavad_jax import score
    record = test[4]
    extras = {k: record.segment_fields[k] for k in registry.extra_fields(config)}
    np.testing.assert_allclose(score.score_video(model, record.features, extras=extras), scores[4], rtol=1e-5,
                               atol=1e-6)
    # A step checkpoint of the run folder loads with its statistics too.
    stepped, _, _, _ = checkpoint.resolve_model(tmp_path / "run", "2")
    np.testing.assert_array_equal(np.asarray(stepped.mtn.bn_1.var[...]), np.asarray(model.mtn.bn_1.var[...]))


def test_darm_on_rtfm_fails_naming_the_field(dataset, tmp_path):
    config = load_config("configs/gvvad_rtfm_ucf.py:runlocal")
    config.data.dir = str(dataset)
    config.data.batch.pseudo_normal = 2
    with pytest.raises(ConfigError, match="data.batch.pseudo_normal"):
        train.train_and_evaluate(config, tmp_path / "rtfm")
    config = load_config("configs/gvvad_lap_ucf.py:runlocal")
    config.data.dir = str(dataset)
    config.model.text_dim = 8
    with pytest.raises(ConfigError, match="model.text_dim"):
        train.train_and_evaluate(config, tmp_path / "lap")


def test_an_imported_rtfm_checkpoint_loads_by_its_name_and_scores_as_the_original(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from pavad_jax import import_rtfm
    from pavad_jax.models import rtfm

    config = load_config("configs/gvvad_rtfm_ucf.py:runlocal")
    original = rtfm.build(config, seed=5)
    for bn in (original.mtn.bn_1, original.mtn.bn_5):  # statistics that differ from the initial ones
        bn.mean[...] = bn.mean[...] + 0.3
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in import_rtfm.to_state_dict(original).items()},
               tmp_path / "rtfm.pkl")
    assert import_rtfm.main([str(tmp_path / "rtfm.pkl"), "--output", str(tmp_path / "model")]) == 0
    assert "D=16" in capsys.readouterr().out
    model, loaded = checkpoint.load_model(tmp_path / "model")
    assert loaded.model.name == "rtfm" and type(model).__name__ == "RTFM"
    features = np.random.default_rng(0).normal(size=(2, CROPS, 20, DIM)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model.scores(features)), np.asarray(original.scores(features)),
                               rtol=1e-6, atol=1e-7)


def test_tevad_is_lap_without_the_prompt_losses():
    from pavad_jax.config_base import model_defaults
    import jax.numpy as jnp

    config = load_config("configs/gvvad_lap_ucf.py:runlocal")
    defaults = model_defaults("tevad")
    for field in ("name", "prompts"):
        config.model[field] = defaults.model[field]
    config.loss.weights.beta = config.loss.weights.gamma = 0.0
    model = registry.build(config, seed=0)  # no prompt bank is read
    assert model.prompt_bank is None and registry.extra_fields(config) == ("caption_embedding",)
    rng = np.random.default_rng(0)
    batch = {"features": jnp.asarray(rng.normal(size=(4, CROPS, 32, DIM)), jnp.float32),
             "caption_embedding": jnp.asarray(rng.normal(size=(4, 32, TEXT)), jnp.float32),
             "label": jnp.asarray([0.0, 0.0, 1.0, 1.0]), "synthetic": jnp.asarray([0.0, 1.0, 0.0, 1.0])}
    weights = {k: jnp.float32(v) for k, v in config.loss.weights.items()}
    total, terms = registry.loss(model, batch, weights, jax.random.key(0), config, step=0)
    assert np.isfinite(float(total)) and float(terms["triplet"]) == float(terms["pseudo_anomaly"]) == 0.0
    with pytest.raises(ValueError, match="reads batch field"):
        registry.loss(model, {k: v for k, v in batch.items() if k != "caption_embedding"}, weights,
                      jax.random.key(0), config)
