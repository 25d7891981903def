"""GV-VAD CLIP segment features: shapes, segment means, records and shard sets."""
import math

import numpy as np
import pytest
import torch

from generation import media, workers
from generation.gvvad import features
from pavad_jax import shards


class MeanColourEncoder:
    """A controlled CLIP image encoder (ClipEncoder's interface): a frame's embedding is its mean RGB."""

    image_size = 32
    feature_dim = 3

    def encode_images(self, frames, normalize=False):
        return torch.as_tensor(frames).float().mean(dim=(1, 2)).numpy()


TINY = features.FeatureSettings(clip_model="tiny", device="cpu")


def mean_colour_featurizer():
    """`pavad-gen extract`'s CLIP segment featuriser with the controlled encoder inside."""
    featurize, prepare = features.clip_segment_featurizer(TINY)
    featurize.encoder = MeanColourEncoder()
    return featurize, prepare


def ramp_video(path, num_frames, size=32):
    """Uniform frames whose brightness rises with the frame index: each segment has its own mean."""
    frames = np.stack([np.full((size, size, 3), 5 * i % 250, np.uint8) for i in range(num_frames)])
    media.write_mp4(path, frames, fps=8)
    return media.read_frames(path)  # decoded frames, as the extractor sees them


@pytest.mark.parametrize("num_frames, batch_size", [(16, 8), (17, 1), (40, 2)])
def test_segment_features_are_means_over_16_frames(tmp_path, num_frames, batch_size):
    decoded = ramp_video(tmp_path / "v.mp4", num_frames)
    featurize, prepare = mean_colour_featurizer()
    got, count = features.video_segment_features(tmp_path / "v.mp4", featurize, prepare, batch_size)
    assert count == num_frames
    assert got.shape == (1, math.ceil(num_frames / 16), 3) and got.dtype == np.float32
    per_frame = decoded.reshape(num_frames, -1, 3).mean(1)
    expected = [per_frame[i:i + 16].mean(0) for i in range(0, num_frames, 16)]  # last may be short
    np.testing.assert_allclose(got[0], np.stack(expected), rtol=1e-4)


@pytest.mark.parametrize("num_frames", [17, 33])
def test_tiny_clip_features_have_shape_1_t_d(tmp_path, num_frames):
    ramp_video(tmp_path / "v.mp4", num_frames, size=48)
    featurize, prepare = features.clip_segment_featurizer(TINY)
    got, count = features.video_segment_features(tmp_path / "v.mp4", featurize, prepare)
    assert (count, got.shape) == (num_frames, (1, math.ceil(num_frames / 16), featurize.feature_dim))
    assert np.isfinite(got).all() and not np.allclose(got[0, 0], got[0, -1])


def test_records_follow_gvvad_mixing():
    """Synthetic normal videos are ordinary normal training data with source 'pseudo'."""
    feats = np.zeros((1, 2, 4), np.float32)
    abnormal = features.to_record({"id": "a", "split": "train", "label": 1, "anomaly_class": "Arson",
                                   "source": "pseudo"}, feats, 20)
    normal = features.to_record({"id": "n", "split": "train", "label": 0, "anomaly_class": "normal",
                                 "source": "pseudo"}, feats, 20)
    test = features.to_record({"id": "t", "split": "test", "label": 1, "anomaly_class": "Fighting",
                               "abnormal_frames": [[4, 8], [15, 99]]}, feats, 20)
    assert (abnormal.stream, abnormal.source, abnormal.label) == ("abnormal", "pseudo", 1)
    assert (normal.stream, normal.source, normal.anomaly_class) == ("normal", "pseudo", "normal")
    assert abnormal.frame_labels is None and test.source == "real"
    assert test.frame_labels.tolist() == [0] * 4 + [1] * 4 + [0] * 7 + [1] * 5


def test_step_writes_valid_train_and_test_shard_sets(tmp_path, monkeypatch):
    for name, frames in (("syn-a", 20), ("syn-n", 17), ("real-a", 33), ("real-t", 16)):
        ramp_video(tmp_path / f"{name}.mp4", frames)
    workers.write_jsonl(tmp_path / "decisions.jsonl", [
        {"id": "syn-a", "video": "syn-a.mp4", "path": str(tmp_path / "syn-a.mp4"), "kept": True,
         "label": 1, "anomaly_class": "Explosion", "score": 0.3},
        {"id": "syn-n", "video": "syn-n.mp4", "path": str(tmp_path / "syn-n.mp4"), "kept": True,
         "label": 0, "anomaly_class": "normal", "score": 0.25},
        {"id": "syn-x", "video": "gone.mp4", "path": str(tmp_path / "gone.mp4"), "kept": False,
         "label": 1, "anomaly_class": "Arson", "score": 0.1}])  # rejected: never read
    workers.write_jsonl(tmp_path / "real.jsonl", [
        {"id": "real-a", "path": str(tmp_path / "real-a.mp4"), "split": "train", "label": 1,
         "anomaly_class": "Robbery"},
        {"id": "real-t", "path": str(tmp_path / "real-t.mp4"), "split": "test", "label": 1,
         "anomaly_class": "Robbery", "abnormal_frames": [[8, 16]]}])
    controlled = mean_colour_featurizer()
    monkeypatch.setattr(features, "clip_segment_featurizer", lambda *a, **k: controlled)
    counts = features.run_features(features.FeatureSettings(clip_model="colour"), dataset_dir=str(tmp_path / "ds"),
                                   cache_dir=str(tmp_path / "cache"), decisions=str(tmp_path / "decisions.jsonl"),
                                   real_videos=str(tmp_path / "real.jsonl"))
    assert counts == {"train/gvvad-synthetic": 2, "train/real": 1, "test/real": 1}
    assert shards.validate(tmp_path / "ds" / "train") == [] and shards.validate(tmp_path / "ds" / "test") == []
    sets = shards.find_shard_sets(tmp_path / "ds")
    assert {tuple(shards.manifest_provenance(shards.load_manifest(d)).values()) for d in sets} == {
        ("clip:colour", "shortside(resize=clip,crop=clip)")}
    assert shards.check_provenance(sets) == []  # one extractor, one protocol
    synthetic = {r.id: r for r in shards.ShardSet(tmp_path / "ds" / "train" / "gvvad-synthetic")}
    assert synthetic["syn-a"].features.shape == (1, 2, 3) and synthetic["syn-a"].num_frames == 20
    assert (synthetic["syn-n"].stream, synthetic["syn-n"].source) == ("normal", "pseudo")
    test = shards.ShardSet(tmp_path / "ds" / "test")[0]
    assert test.frame_labels.tolist() == [0] * 8 + [1] * 8 and test.source == "real"


def test_real_video_lists_name_the_bad_field(tmp_path):
    video = tmp_path / "v.mp4"
    ramp_video(video, 4)
    good = {"id": "v", "path": str(video), "split": "test", "label": 0, "anomaly_class": "normal"}
    for change, message in ((dict(split="val"), "field 'split'"),
                            (dict(anomaly_class="Arson"), "field 'anomaly_class'"),
                            (dict(abnormal_frames=[[5, 2]]), "field 'abnormal_frames'"),
                            (dict(path=str(tmp_path / "none.mp4")), "field 'path'")):
        workers.write_jsonl(tmp_path / "real.jsonl", [dict(good, **change)])
        with pytest.raises((ValueError, FileNotFoundError), match=rf"real.jsonl:1: {message}"):
            features.load_real_videos(tmp_path / "real.jsonl")


def test_each_worker_writes_the_shard_sets_of_its_slice(tmp_path, monkeypatch):
    rows = []
    for i in range(3):
        ramp_video(tmp_path / f"s{i}.mp4", 18)
        rows.append({"id": f"s{i}", "video": f"s{i}.mp4", "path": str(tmp_path / f"s{i}.mp4"),
                     "kept": True, "label": 1, "anomaly_class": "Arson", "score": 0.3})
    workers.write_jsonl(tmp_path / "decisions.jsonl", rows)
    controlled = mean_colour_featurizer()
    monkeypatch.setattr(features, "clip_segment_featurizer", lambda *a, **k: controlled)
    for index in range(2):
        counts = features.run_features(TINY, dataset_dir=str(tmp_path / "ds"), cache_dir=str(tmp_path / "c"),
                                       decisions=str(tmp_path / "decisions.jsonl"),
                                       shard_index=index, num_shards=2)
        assert counts == {f"train/gvvad-synthetic-part-{index}-of-2": 2 - index}
    assert shards.validate(tmp_path / "ds" / "train") == []
    assert sorted(r.id for r in shards.ShardSet(tmp_path / "ds" / "train")) == ["s0", "s1", "s2"]
