"""The embedded synthetic benchmark: structure, determinism, calibration and the generator shift."""
import json

import numpy as np
import pytest

from pavad_jax import shards
from pavad_jax.data import synthetic


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic.ensure_synthetic(tmp_path_factory.mktemp("cache"), "small", seed=0)


def load(path, split):
    data = shards.ShardSet(path / split)
    return data, [data[i] for i in range(len(data))]


def pooled_norm(records):
    """Mean segment L2 norm pooled over every segment and crop of `records`."""
    norms = [np.linalg.norm(r.features.astype(np.float32), axis=-1).ravel() for r in records]
    return float(np.concatenate(norms).mean())


def test_small_dataset_structure(small):
    spec = synthetic.SIZES["small"]
    train, train_records = load(small, "train")
    test, test_records = load(small, "test")
    assert shards.validate(small) == []
    counts = shards.load_manifest(small / "train")["counts"]
    assert counts["stream"] == {"abnormal": spec.train_pseudo_abnormal + spec.train_real_abnormal,
                                "normal": spec.train_normal, "pseudo-normal": spec.train_pseudo_normal}
    assert {(e["source"], e["stream"]) for e in train.entries} == {
        ("real", "normal"), ("pseudo", "abnormal"), ("pseudo", "pseudo-normal"), ("real", "abnormal")}
    assert {e["source"] for e in test.entries} == {"real"}
    assert len(test) == spec.test_normal + spec.test_abnormal
    for record in train_records + test_records:
        assert record.features.shape[0] == spec.crops and record.features.shape[2] == spec.feature_dim
        assert (record.features >= 0).all()  # post-ReLU, like I3D
    for record in train_records:
        lo, hi = spec.pseudo_t if record.source == "pseudo" else spec.real_train_t
        assert lo <= record.features.shape[1] <= hi and record.frame_labels is None
    for record in test_records:
        labels = shards.aligned_frame_labels(record)
        assert len(labels) == record.num_frames == record.features.shape[1] * 16
        if record.label:  # short intervals: some but not most frames
            assert 0.03 < labels.mean() < 0.5
        else:
            assert not labels.any()
    classes = {r.anomaly_class for r in train_records if r.label}
    assert classes == set(synthetic.CLASS_NAMES[: spec.num_classes])


def test_calibrated_to_table1_norms(small):
    _, train = load(small, "train")
    _, test = load(small, "test")
    real_anomalies = [r for r in train + test if r.source == "real" and r.label == 1]
    pseudo_anomalies = [r for r in train if r.source == "pseudo" and r.label == 1]
    # Exact before the float16 cast; the cast moves the mean by far less than 0.5%.
    assert pooled_norm(real_anomalies) == pytest.approx(synthetic.REAL_ANOMALY_NORM, rel=5e-3)
    assert pooled_norm(pseudo_anomalies) == pytest.approx(synthetic.PSEUDO_ANOMALY_NORM, rel=5e-3)
    info = json.loads((small / synthetic.INFO_FILE).read_text())
    assert info["mean_segment_norm"]["train/pseudo/abnormal"] == pytest.approx(synthetic.PSEUDO_ANOMALY_NORM)


def test_generator_shift_is_present_without_anomalies(small):
    """Pseudo-normal videos carry the shift too (larger norms, faster drift): a genuine confound."""
    _, train = load(small, "train")
    real_normal = [r for r in train if r.stream == "normal"]
    pseudo_normal = [r for r in train if r.stream == "pseudo-normal"]
    assert pooled_norm(pseudo_normal) > 1.03 * pooled_norm(real_normal)

    def drift(records):
        return np.mean([np.linalg.norm(np.diff(r.features.astype(np.float32), axis=1), axis=-1).mean()
                        for r in records])

    assert drift(pseudo_normal) > 1.5 * drift(real_normal)


def test_real_anomalies_are_learnable_from_pseudo_anomalies(small):
    """A linear probe fit on training segments only (real normal and pseudo-normal vs pseudo
    anomalous) ranks the frames of the real test anomalies above chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, train = load(small, "train")
    _, test = load(small, "test")
    segments = lambda records: np.concatenate([r.features.astype(np.float32).mean(0) for r in records])
    negatives = segments([r for r in train if r.stream in ("normal", "pseudo-normal")])
    positives = segments([r for r in train if r.source == "pseudo" and r.label])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    probe.fit(np.concatenate([negatives, positives]), np.r_[np.zeros(len(negatives)), np.ones(len(positives))])
    labels = np.concatenate([shards.aligned_frame_labels(r).reshape(-1, 16).max(1) for r in test])
    assert roc_auc_score(labels, probe.decision_function(segments(test))) > 0.7


def test_deterministic_per_seed(tmp_path):
    a = synthetic.generate(tmp_path / "a", "small", seed=5)
    b = synthetic.generate(tmp_path / "b", "small", seed=5)
    c = synthetic.generate(tmp_path / "c", "small", seed=6)
    assert a == b and a["calibration_scales"] != c["calibration_scales"]
    for split in ("train", "test"):
        files = lambda d: [f["sha256"] for f in shards.load_manifest(d / split)["files"]]
        assert files(tmp_path / "a") == files(tmp_path / "b")
        assert files(tmp_path / "a") != files(tmp_path / "c")


def test_ensure_synthetic_reuses_a_valid_copy_and_rebuilds_a_broken_one(tmp_path):
    path = synthetic.ensure_synthetic(tmp_path, "small", seed=1)
    info = path / synthetic.INFO_FILE
    stamp = info.stat().st_mtime_ns
    assert synthetic.ensure_synthetic(tmp_path, "small", seed=1) == path
    assert info.stat().st_mtime_ns == stamp  # not regenerated
    part = next((path / "test").glob("*.array_record"))
    part.write_bytes(part.read_bytes()[:100])  # truncated: the copy is no longer valid
    assert not synthetic.is_valid(path, "small", 1)
    assert synthetic.ensure_synthetic(tmp_path, "small", seed=1) == path
    assert shards.validate(path) == []
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folders left


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="huge"):
        synthetic.generate(tmp_path, "huge")


def test_ucf_shaped_data_has_the_real_test_lengths_and_is_written_video_by_video(tmp_path):
    import tracemalloc

    lengths = synthetic.ucf_test_lengths()
    assert len(lengths) == 290 and sum(t for _, t in lengths) == 69355 and max(t for _, t in lengths) == 6749
    tracemalloc.start()
    info = synthetic.generate_ucf(tmp_path, seed=3, crops=2, feature_dim=32,
                                  train_videos={"abnormal": 9, "normal": 8})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    test, test_records = load(tmp_path, "test")
    assert [r.id for r in test_records] == [name for name, _ in lengths]
    assert [r.features.shape for r in test_records] == [(2, t, 32) for _, t in lengths]
    assert test.dtype == np.float16 and info["segments"]["test"] == 69355
    longest_bytes = 6749 * 2 * 32 * 2  # the split is 10.3x this: holding it all would show
    assert peak < 6 * longest_bytes  # streamed: a few copies of one video at a time
    abnormal = [r for r in test_records if r.label == 1]
    assert len(abnormal) == 140 and {r.anomaly_class for r in abnormal} >= {"Arson", "RoadAccidents", "Shoplifting"}
    assert all(shards.aligned_frame_labels(r).any() for r in abnormal)
    assert not any(shards.aligned_frame_labels(r).any() for r in test_records if r.label == 0)
    features = np.concatenate([r.features.reshape(-1) for r in test_records[:20]]).astype(np.float32)
    assert 0.5 <= features.min() and features.max() < 1.0 and abs(features.mean() - 0.75) < 0.01
    train, train_records = load(tmp_path, "train")
    assert shards.load_manifest(tmp_path / "train")["counts"]["stream"] == {"abnormal": 9, "normal": 8}
    assert {r.features.shape[1] for r in train_records} <= {t for _, t in lengths}
    assert all(r.frame_labels is None and r.source == "real" for r in train_records)
    assert synthetic.is_valid(tmp_path, "ucf", 3, splits=("test",))
    assert not synthetic.is_valid(tmp_path, "ucf", 3)  # 17 training videos, not UCF-Crime's 1610


def test_synthetic_splits_limit_what_is_written(tmp_path):
    synthetic.build(tmp_path / "d", "small", seed=2, splits=("test",))
    assert (tmp_path / "d" / "test").is_dir() and not (tmp_path / "d" / "train").exists()
    assert synthetic.is_valid(tmp_path / "d", "small", 2, splits=("test",))
    assert not synthetic.is_valid(tmp_path / "d", "small", 2)
    assert synthetic.build(tmp_path / "d", "small", seed=2)  # both splits asked: rebuilt
    assert synthetic.is_valid(tmp_path / "d", "small", 2)
    with pytest.raises(ValueError, match="splits"):
        synthetic.build(tmp_path / "e", "small", splits=("val",))
