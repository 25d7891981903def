"""A tiny, easy dataset and a tiny config for the training tests."""
import pathlib

import numpy as np

from pavad_jax.config_base import base_config
from pavad_jax.shards import VideoRecord, write_shard_set

DIM = 16


def _video(rng, length: int, anomaly: tuple[int, int] | None, crops: int = 1) -> np.ndarray:
    """Non-negative I3D-like features; an anomaly adds a fixed direction over its interval."""
    x = np.abs(rng.normal(0.5, 0.2, (crops, length, DIM))).astype(np.float32)
    if anomaly:
        x[:, anomaly[0]:anomaly[1], : DIM // 2] += 1.5
    return x


def write_easy_dataset(root: pathlib.Path, seed: int = 0, n_train: int = 8, n_test: int = 6) -> pathlib.Path:
    """train/: normal, pseudo-abnormal and pseudo-normal videos; test/: labelled real videos (2 crops)."""
    rng = np.random.default_rng(seed)
    train = []
    for i in range(n_train):
        t = int(rng.integers(20, 40))
        train.append(VideoRecord(f"n{i}", _video(rng, t, None), 0, "real", "normal", "normal", 16 * t))
        s = int(rng.integers(0, t - 8))
        train.append(VideoRecord(f"a{i}", _video(rng, t, (s, s + 8)) * 1.1, 1, "pseudo", "abnormal", "Fight", 16 * t))
        train.append(VideoRecord(f"p{i}", _video(rng, t, None) * 1.1, 0, "pseudo", "pseudo-normal", "normal", 16 * t))
    test = []
    for i in range(n_test):
        t = int(rng.integers(10, 50))
        if i % 2:
            s = int(rng.integers(0, t - 5))
            labels = np.zeros(16 * t, np.uint8)
            labels[16 * s:16 * (s + 5)] = 1
            test.append(VideoRecord(f"ta{i}", _video(rng, t, (s, s + 5), crops=2), 1, "real", "abnormal", "Fight",
                                    16 * t, labels))
        else:
            test.append(VideoRecord(f"tn{i}", _video(rng, t, None, crops=2), 0, "real", "normal", "normal", 16 * t,
                                    np.zeros(16 * t, np.uint8)))
    write_shard_set(root / "train", train, dtype="float32")
    write_shard_set(root / "test", test, dtype="float32")
    return root


def tiny_config(data_dir: pathlib.Path, steps: int = 4):
    """A config that trains a tiny UR-DMU + DARM in well under a second per step."""
    config = base_config()
    config.data.dir = str(data_dir)
    config.data.segments = 16
    config.data.batch.normal = 2
    config.data.batch.abnormal = 2
    config.data.batch.pseudo_normal = 4
    config.data.eval_buckets = (16, 64)
    config.data.eval_batch_size = 4
    config.model.feature_dim = DIM
    config.model.hidden = 32
    config.model.mlp_dim = 32
    config.model.cls_hidden = 8
    config.model.heads = 2
    config.model.a_slots = 8
    config.model.n_slots = 8
    config.loss.darm.discriminator_hidden = (8,)
    config.train.steps = steps
    config.train.eval_every = steps
    config.train.checkpoint_every = steps
    config.train.log_every = 1
    return config
