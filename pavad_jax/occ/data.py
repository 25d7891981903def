"""Reading what generation/rai/prepare.py wrote (layout in its docstring and docs/occ.md).

Arrays stay uint8 / float16 on the host (memory-mapped) and are converted to float32 on the
device: frames to [0, 1], flows to pixels * flow_scale.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from pavad_jax import shards

TRAIN_ARRAYS = ("clips", "spatial_pa", "flows", "temporal_pa")


class DataError(ValueError):
    """The prepared data folder is missing or malformed; the message names the file."""


@dataclasses.dataclass
class TrainData:
    """Normal clips and flows, with their pseudo-anomalous versions (same index = same clip)."""

    clips: np.ndarray  # (M, T, S, S, C) uint8
    spatial_pa: np.ndarray  # (M, T, S, S, C) uint8
    flows: np.ndarray  # (M, T, S, S, 2) float16
    temporal_pa: np.ndarray  # (M, T, S, S, 2) float16


@dataclasses.dataclass
class TestVideo:
    """One evaluation video: frames, per-frame flow, CLIP features and frame labels."""

    id: str
    frames: np.ndarray  # (N, S, S, C) uint8
    flows: np.ndarray  # (N, S, S, 2) float16
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) uint8


def is_prepared(data_dir: pathlib.Path) -> bool:
    """Whether a preparation run finished in data_dir (prepared.json is written last)."""
    return (pathlib.Path(data_dir) / "prepared.json").is_file()


def load_summary(data_dir: pathlib.Path) -> dict:
    """The prepared.json of a finished preparation."""
    path = pathlib.Path(data_dir) / "prepared.json"
    if not path.is_file():
        raise DataError(f"{path} is missing: run `pavad-occ prepare` (or train) first")
    return json.loads(path.read_text())


def load_train(data_dir: pathlib.Path) -> TrainData:
    """The four training arrays, memory-mapped, checked to agree in length and shape."""
    arrays = {}
    for name in TRAIN_ARRAYS:
        path = pathlib.Path(data_dir, "train", f"{name}.npy")
        if not path.is_file():
            raise DataError(f"{path} is missing: the data folder was not prepared")
        arrays[name] = np.load(path, mmap_mode="r")
    data = TrainData(**arrays)
    if data.clips.shape != data.spatial_pa.shape or data.flows.shape != data.temporal_pa.shape:
        raise DataError(f"{data_dir}/train: spatial_pa {data.spatial_pa.shape} / temporal_pa "
                        f"{data.temporal_pa.shape} do not match clips {data.clips.shape} / flows {data.flows.shape}")
    if data.clips.shape[:4] != data.flows.shape[:4] or data.flows.shape[-1] != 2:
        raise DataError(f"{data_dir}/train: flows.npy {data.flows.shape} do not match clips.npy {data.clips.shape}")
    return data


def frame_features(set_dir: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame CLIP features (N, D) and labels (N,) (1 = spatial pseudo-anomaly) from a shard set."""
    with_labels = [(r.features[0].astype(np.float32), np.full(r.features.shape[1], r.label, np.float32))
                   for r in shards.ShardSet(set_dir)]
    if not with_labels:
        raise DataError(f"{set_dir}: no records")
    features, labels = zip(*with_labels)
    return np.concatenate(features), np.concatenate(labels)


def load_test(data_dir: pathlib.Path) -> list[TestVideo]:
    """All test videos, in shard order, with their frame labels from the test shard set."""
    data_dir = pathlib.Path(data_dir)
    videos = []
    for record in shards.ShardSet(data_dir / "test" / "clip_shards"):
        frames_path = data_dir / "test" / "frames" / f"{record.id}.npy"
        flows_path = data_dir / "test" / "flows" / f"{record.id}.npy"
        for path in (frames_path, flows_path):
            if not path.is_file():
                raise DataError(f"{path} is missing for test video {record.id!r}")
        frames, flows = np.load(frames_path), np.load(flows_path)
        if record.frame_labels is None:
            raise DataError(f"{data_dir}/test/clip_shards: record {record.id!r} has no field 'frame_labels'")
        n = len(frames)
        if len(flows) != n or record.features.shape[1] != n or len(record.frame_labels) != n:
            raise DataError(f"test video {record.id!r}: {n} frames but {len(flows)} flows, "
                            f"{record.features.shape[1]} features, {len(record.frame_labels)} labels")
        videos.append(TestVideo(record.id, frames, flows, record.features[0].astype(np.float32),
                                np.asarray(record.frame_labels, np.uint8)))
    return videos


def epoch_order(num_items: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """(steps, batch_size) indices of one epoch: a permutation, topped up so no item is dropped."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_items)
    short = (-num_items) % batch_size
    order = np.concatenate([order, rng.choice(num_items, short, replace=num_items < short)])
    return order.reshape(-1, batch_size)


def steps_per_epoch(num_items: int, batch_size: int) -> int:
    """Number of batches epoch_order yields."""
    return -(-num_items // batch_size)
