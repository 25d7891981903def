"""Reading the prepared data folder: batching order and clear errors on malformed folders."""
import numpy as np
import pytest

from pavad_jax import shards
from pavad_jax.occ import data


def test_epoch_order_covers_every_item_and_depends_on_seed_and_epoch():
    order = data.epoch_order(21, 8, seed=0, epoch=0)
    assert order.shape == (data.steps_per_epoch(21, 8), 8) == (3, 8)
    assert set(order.ravel()) == set(range(21))  # nothing dropped; 3 items drawn twice to fill the batch
    np.testing.assert_array_equal(order, data.epoch_order(21, 8, seed=0, epoch=0))  # resumable
    assert not np.array_equal(order, data.epoch_order(21, 8, seed=0, epoch=1))
    assert data.epoch_order(3, 8, 0, 0).shape == (1, 8)  # fewer items than a batch


def _write_train(root, clips_shape=(3, 8, 16, 16, 3), flows_shape=(3, 8, 16, 16, 2)):
    train = root / "train"
    train.mkdir(parents=True)
    np.save(train / "clips.npy", np.zeros(clips_shape, np.uint8))
    np.save(train / "spatial_pa.npy", np.zeros(clips_shape, np.uint8))
    np.save(train / "flows.npy", np.zeros(flows_shape, np.float16))
    np.save(train / "temporal_pa.npy", np.zeros(flows_shape, np.float16))


def test_load_train_checks_the_arrays(tmp_path):
    _write_train(tmp_path / "ok")
    assert data.load_train(tmp_path / "ok").clips.shape == (3, 8, 16, 16, 3)
    _write_train(tmp_path / "bad", flows_shape=(2, 8, 16, 16, 2))
    with pytest.raises(data.DataError, match="flows.npy"):
        data.load_train(tmp_path / "bad")
    with pytest.raises(data.DataError, match="clips.npy is missing"):
        data.load_train(tmp_path / "none")
    with pytest.raises(data.DataError, match="prepared.json is missing"):
        data.load_summary(tmp_path / "ok")


def test_load_test_pairs_frames_flows_features_and_labels(tmp_path):
    labels = np.array([0, 0, 1, 1, 0], np.uint8)
    record = shards.VideoRecord("v1", np.ones((1, 5, 4), np.float32), 1, "real", "abnormal", "pasted-object", 5, labels)
    shards.write_shard_set(tmp_path / "test" / "clip_shards", [record], dtype="float32")
    (tmp_path / "test" / "frames").mkdir()
    (tmp_path / "test" / "flows").mkdir()
    np.save(tmp_path / "test" / "frames" / "v1.npy", np.zeros((5, 16, 16, 3), np.uint8))
    np.save(tmp_path / "test" / "flows" / "v1.npy", np.zeros((5, 16, 16, 2), np.float16))
    (video,) = data.load_test(tmp_path)
    assert video.id == "v1" and video.features.shape == (5, 4)
    np.testing.assert_array_equal(video.labels, labels)
    np.save(tmp_path / "test" / "flows" / "v1.npy", np.zeros((4, 16, 16, 2), np.float16))
    with pytest.raises(data.DataError, match="5 frames but 4 flows"):
        data.load_test(tmp_path)
