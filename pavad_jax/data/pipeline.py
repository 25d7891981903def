"""Input pipelines: training batches (grain, or device-resident) and bucketed evaluation batches.

Training follows UR-DMU's loaders (shared/reference/urdmu.md, "Training and data"): every step
takes a fixed number of rows per stream (normal, abnormal, pseudo-normal), each a crop sequence
resampled to T segments (`resample_segments`). Which (video, crop) fills each row is
`pavad_jax.data.order`: with data.sample_unit = "crop" (the reference) every (video, crop) pair
is a sample and each stream is a shuffled pass over its crop sequences per epoch, the remainder
dropped (``drop_last``), the streams restarting independently; "video" shuffles videos and
takes one crop of each uniformly. The order depends on data.seed only.

Two interchangeable training paths give the *same* batches, bit for bit, so choosing one
(data.device_resident) changes speed, never results (docs/architecture.md, "Batches"):

* `make_train_iterator`: grain on the host, checkpointable (``get_state``/``set_state``), each
  host producing its slice of every stream for ``jax.make_array_from_process_local_data``.
* `DeviceResidentSampler`: every (video, crop) resampled to T once and kept on the device
  (stored as data.table_dtype); ``sample(step)`` is jittable and returns the global batch of
  that step. The grain path rounds its features through data.table_dtype the same way.

Evaluation (`make_eval_batches`) keeps test videos at full length: short videos are packed
several to a row of a few bucket lengths (segment ids tell them apart), long ones get a row of
their own padded by a bounded fraction, so a jitted scorer compiles once per row length and
little work goes to padding. The batches are read from the shards when iterated, never all at
once.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from tqdm import tqdm

from pavad_jax.config_base import default_data_config  # noqa: F401  (the data fields' defaults)
from pavad_jax.data import order
from pavad_jax.data.resample import resample_segments
from pavad_jax.shards import SEGMENT_FRAMES, STREAMS, ShardSet, align_labels

# config.data.batch keys, in batch-row order; a batch's `stream` value i means STREAMS[i].
BATCH_KEYS = ("normal", "abnormal", "pseudo_normal")
STREAM_IDS = {name: i for i, name in enumerate(STREAMS)}
_SOURCES = {
    "normal_source": ("real", "any"),
    "abnormal_source": ("pseudo", "real", "any"),
}
GIB = 2**30
# data.table_dtype -> the numpy dtype training features are rounded through (bfloat16 from ml_dtypes).
TABLE_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(jnp.bfloat16)}


# ----------------------------------------------------------------------------- selection


def split_path(data_config: ml_collections.ConfigDict, split: str) -> pathlib.Path:
    """`data.dir`/`split`, with a clear error when it is unset or missing."""
    if not data_config.dir:
        raise ValueError("config.data.dir is empty: set it to a dataset folder holding "
                         f"{data_config.train_split}/ and {data_config.test_split}/")
    path = pathlib.Path(data_config.dir) / split
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no folder for split {split!r} (config.data.dir={data_config.dir!r})")
    return path


def open_split(data_config: ml_collections.ConfigDict, split: str, *, verify: bool = True) -> ShardSet:
    """The ShardSet of one split of `data.dir` (every shard set below it)."""
    return ShardSet(split_path(data_config, split), verify=verify)


def stream_counts(data_config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """Global videos per step of each stream, (normal, abnormal, pseudo-normal), validated."""
    counts = []
    for key in BATCH_KEYS:
        value = data_config.batch.get(key, 0)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"config.data.batch.{key} must be a non-negative int, got {value!r}")
        counts.append(int(value))
    if counts[0] == 0 or counts[1] == 0:
        raise ValueError(f"config.data.batch needs normal > 0 and abnormal > 0, got {dict(zip(BATCH_KEYS, counts))}")
    return tuple(counts)


def _accepts(entry: dict, stream: str, data_config: ml_collections.ConfigDict) -> bool:
    """Whether a record feeds `stream` under data.normal_source / data.abnormal_source."""
    if entry["stream"] != stream:
        return False
    if stream == "pseudo-normal":
        return True
    source = data_config.normal_source if stream == "normal" else data_config.abnormal_source
    return source == "any" or entry["source"] == source


def select_streams(shards: ShardSet, data_config: ml_collections.ConfigDict) -> list[np.ndarray]:
    """Record indices of each stream (normal, abnormal, pseudo-normal) in `shards`.

    A stream with a zero count in data.batch gets no records; a used stream with none is an
    error that names the split and the source filter. data.abnormal_clips > 0 keeps that many
    abnormal-stream videos, a fixed subset drawn with data.seed (`subset_clips`).
    """
    for field, allowed in _SOURCES.items():
        if data_config[field] not in allowed:
            raise ValueError(f"config.data.{field} is {data_config[field]!r}, expected one of {allowed}")
    counts = stream_counts(data_config)
    selected = []
    for stream, count in zip(STREAMS, counts):
        indices = [i for i, e in enumerate(shards.entries) if _accepts(e, stream, data_config)] if count else []
        if count and not indices:
            have = sorted({(e["stream"], e["source"]) for e in shards.entries})
            raise ValueError(f"{shards.path}: no records for stream {stream!r} (normal_source="
                             f"{data_config.normal_source!r}, abnormal_source={data_config.abnormal_source!r}); "
                             f"the split holds (stream, source) = {have}")
        selected.append(np.asarray(indices, np.int64))
    clips = int(data_config.get("abnormal_clips", 0) or 0)
    if clips:
        selected[1] = subset_clips(selected[1], clips, int(data_config.seed), where=str(shards.path))
    return selected


def subset_clips(indices: np.ndarray, clips: int, seed: int, *, where: str = "the training split") -> np.ndarray:
    """A fixed random subset of `clips` abnormal-stream videos, in record order (the same for every run of a seed)."""
    if not 0 < clips <= len(indices):
        raise ValueError(f"config.data.abnormal_clips = {clips}: {where} has only {len(indices)} "
                         "abnormal-stream videos")
    chosen = np.random.default_rng([seed, 1]).permutation(len(indices))[:clips]
    return np.sort(indices[chosen])


def table_dtype(data_config: ml_collections.ConfigDict) -> np.dtype:
    """data.table_dtype as a numpy dtype, with a clear error on an unknown name."""
    name = str(data_config.get("table_dtype", "float32"))
    if name not in TABLE_DTYPES:
        raise ValueError(f"config.data.table_dtype is {name!r}, expected one of {sorted(TABLE_DTYPES)}")
    return TABLE_DTYPES[name]


def _stream_orders(crops: Sequence[np.ndarray], counts: Sequence[int], unit: str, seed: int
                   ) -> list[tuple[order.StreamUnits, order.StreamOrder] | None]:
    """Per stream, its units and their order from the crop counts of its videos; None for an unused stream."""
    plans = []
    for stream_id, (stream_crops, count) in enumerate(zip(crops, counts)):
        if not count:
            plans.append(None)
            continue
        units = order.stream_units(stream_crops, unit)
        plans.append((units, order.StreamOrder.make(len(units), count, seed=seed, stream_id=stream_id)))
    return plans


# ----------------------------------------------------------------------------- grain training path


class _StreamPositions(grain.transforms.Map):
    """Position k of an endless stream -> (record index, crop), as `order.StreamOrder` orders it.

    Each epoch's permutation is computed once and cached (a few epochs per stream at a time).
    """

    def __init__(self, indices: np.ndarray, units: order.StreamUnits, stream_order: order.StreamOrder):
        self.indices = indices
        self.units = units
        self.order = stream_order

    @functools.lru_cache(maxsize=64)  # keyed by (self, epoch)
    def _epoch(self, epoch: int) -> np.ndarray:
        return self.order.permutation(epoch)

    def map(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.order.usable)
        unit = int(self._epoch(epoch)[offset])
        crop = int(self.units.crop[unit])
        if self.units.span[unit] > 1:
            crop += int(self.order.crop_offsets(np.asarray([position]), self.units.span[unit:unit + 1])[0])
        return int(self.indices[self.units.video[unit]]), crop


class _LoadSample(grain.transforms.Map):
    """Reads one video's crop (all its crops: `all_crops`) and resamples it, and each per-segment
    field of `fields`, to T segments, rounded through the table dtype."""

    def __init__(self, shards: ShardSet, segments: int, stream_id: int, dtype: np.dtype, all_crops: bool = False,
                 fields: Sequence[str] = ()):
        self.shards = shards
        self.segments = segments
        self.stream_id = stream_id
        self.dtype = dtype
        self.all_crops = all_crops
        self.fields = tuple(fields)

    def _resampled(self, x: np.ndarray) -> np.ndarray:
        return resample_segments(x, self.segments).astype(self.dtype, copy=False).astype(np.float32, copy=False)

    def map(self, element: tuple[int, int]) -> dict[str, np.ndarray]:
        index, crop = element
        record = self.shards[index]
        return {
            "features": self._resampled(record.features if self.all_crops else record.features[crop]),
            "label": np.float32(record.label),
            "synthetic": np.float32(record.source == "pseudo"),
            "stream": np.int32(self.stream_id),
            **{name: self._resampled(record.segment_fields[name]) for name in self.fields},
        }


def check_fields(shards: ShardSet, fields: Sequence[str]) -> None:
    """ValueError naming the shard set that lacks a per-segment field the detector reads."""
    try:
        shards.require_fields(fields)
    except ValueError as e:
        raise ValueError(str(e)) from None


def check_all_crops(shards: ShardSet, streams: Sequence[np.ndarray], unit: str) -> None:
    """data.sample_unit 'all_crops' stacks a video's crops: every training video needs the same count."""
    if unit != "all_crops":
        return
    counts = sorted({shards.entries[i]["crops"] for indices in streams for i in indices})
    if len(counts) > 1:
        raise ValueError(f"config.data.sample_unit = 'all_crops' stacks every crop of a video, but the training "
                         f"videos of {shards.path} have different crop counts {counts}")


def host_count(global_count: int, process_count: int, name: str) -> int:
    """Rows of one host in a stream of `global_count` rows; error unless it divides evenly."""
    if global_count % process_count:
        raise ValueError(f"config.data.batch.{name}={global_count} is not divisible by process_count="
                         f"{process_count}: every host must take an equal slice of each stream")
    return global_count // process_count


class _HostSteps(grain.MapDataset):
    """Step i -> this host's batch: its slice of step i of every stream, rows in stream order.

    With n global rows of a stream and P hosts, host p takes positions [i*n + p*n/P, i*n +
    (p+1)*n/P), so the host slices concatenated in process order are the global batch.
    """

    def __init__(self, streams: Sequence[grain.MapDataset], counts: Sequence[int], process_index: int,
                 process_count: int):
        super().__init__(streams)
        self._counts = [int(c) for c in counts]
        self._process_index = process_index
        self._process_count = process_count

    def __len__(self) -> int:
        return sys.maxsize // max(self._counts)

    def __getitem__(self, step):
        if isinstance(step, slice):
            return self.slice(step)
        samples = []
        for stream, n in zip(self.parents, self._counts):
            per_host = n // self._process_count
            first = step * n + self._process_index * per_host
            samples += [stream[k] for k in range(first, first + per_host)]
        return {key: np.stack([sample[key] for sample in samples]) for key in samples[0]}

    def __str__(self) -> str:
        return f"_HostSteps(counts={self._counts}, process {self._process_index} of {self._process_count})"


def make_train_dataset(data_config: ml_collections.ConfigDict, *, seed: int | None = None, process_index: int = 0,
                       process_count: int = 1, shards: ShardSet | None = None,
                       fields: Sequence[str] = ()) -> grain.IterDataset:
    """The training pipeline as a grain IterDataset of this host's batches (see make_train_iterator)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside [0, process_count={process_count})")
    seed = data_config.seed if seed is None else seed
    shards = shards if shards is not None else open_split(data_config, data_config.train_split)
    counts = stream_counts(data_config)
    for key, count in zip(BATCH_KEYS, counts):
        host_count(count, process_count, key)
    streams = select_streams(shards, data_config)
    check_all_crops(shards, streams, data_config.sample_unit)
    check_fields(shards, fields)
    crops = [np.asarray([shards.entries[i]["crops"] for i in indices], np.int32) for indices in streams]
    dtype = table_dtype(data_config)
    datasets, used_counts = [], []
    for stream_id, plan in enumerate(_stream_orders(crops, counts, data_config.sample_unit, seed)):
        if plan is None:
            continue
        positions = _StreamPositions(streams[stream_id], *plan)
        load = _LoadSample(shards, data_config.segments, stream_id, dtype, data_config.sample_unit == "all_crops",
                           fields)
        datasets.append(grain.MapDataset.range(sys.maxsize).map(positions).map(load))
        used_counts.append(counts[stream_id])
    steps = _HostSteps(datasets, used_counts, process_index, process_count)
    read = grain.ReadOptions(num_threads=data_config.read_threads, prefetch_buffer_size=data_config.prefetch_batches)
    ds = steps.to_iter_dataset(read)
    if data_config.worker_count > 0:
        # grain's worker processes read absl flags; outside absl.app.run nothing parsed them.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.worker_count))
    return ds


def make_train_iterator(data_config: ml_collections.ConfigDict, *, seed: int | None = None, process_index: int = 0,
                        process_count: int = 1, shards: ShardSet | None = None,
                        fields: Sequence[str] = ()) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this host's training batches.

    Each batch is a dict of numpy arrays with this host's rows of every stream, ordered normal,
    abnormal, pseudo-normal: features (b, T, D) float32, label (b,) float32, synthetic (b,)
    float32 (1 for source=pseudo), stream (b,) int32; b = global count / process_count per
    stream. Batch i of the global batch is what `DeviceResidentSampler.sample(i)` returns.
    `get_state()` / `set_state()` save and restore the position. Deterministic given `seed`
    (default data.seed); `shards` reuses an already opened training split. data.sample_unit
    'all_crops' gives features (b, crops, T, D); each name in `fields` (per-segment fields of the
    shards, e.g. caption_embedding) adds that field resampled to (b, T, E).
    """
    return iter(make_train_dataset(data_config, seed=seed, process_index=process_index,
                                   process_count=process_count, shards=shards, fields=fields))


# ----------------------------------------------------------------------------- device-resident path


@dataclasses.dataclass(frozen=True)
class ResampledTable:
    """Every (video, crop) of the training streams resampled to T, on the host (numpy)."""

    table: np.ndarray  # (rows, T, D) float32 or data.table_dtype; a video's crops are consecutive rows
    first_row: tuple[np.ndarray, ...]  # per stream, (videos,) int32: table row of crop 0
    crops: tuple[np.ndarray, ...]  # per stream, (videos,) int32
    label: tuple[np.ndarray, ...]  # per stream, (videos,) float32
    synthetic: tuple[np.ndarray, ...]  # per stream, (videos,) float32
    record_index: tuple[np.ndarray, ...]  # per stream, (videos,) int64 index into the ShardSet
    # Per-segment fields resampled to T, one row per video (all streams, in order): {name: (videos, T, E)}
    fields: dict = dataclasses.field(default_factory=dict)
    video_row: tuple[np.ndarray, ...] = ()  # per stream, (videos,) int32: the video's row in `fields`


def resampled_table_bytes(shards: ShardSet, streams: Sequence[np.ndarray], segments: int,
                          dtype: np.dtype = np.dtype(np.float32)) -> int:
    """Size in bytes of the table `build_resampled_table` would make (from metadata only)."""
    rows = sum(shards.entries[i]["crops"] for indices in streams for i in indices)
    return rows * segments * (shards.feature_dim or 0) * np.dtype(dtype).itemsize


def build_resampled_table(shards: ShardSet, streams: Sequence[np.ndarray], segments: int,
                          dtype: np.dtype = np.dtype(np.float32), fields: Sequence[str] = ()) -> ResampledTable:
    """Read every selected video once and resample all of its crops (and its per-segment `fields`)
    to `segments`, stored as `dtype`."""
    check_fields(shards, fields)
    n_rows = sum(shards.entries[i]["crops"] for indices in streams for i in indices)
    table = np.empty((n_rows, segments, shards.feature_dim), dtype)
    n_videos = sum(len(indices) for indices in streams)
    field_tables = {name: np.empty((n_videos, segments, shards.segment_fields[name]), dtype) for name in fields}
    video = 0
    first_rows, crops, labels, synthetic = [], [], [], []
    row = 0
    with tqdm(total=sum(len(s) for s in streams), desc="resampling the training set", unit="video",
              disable=jax.process_index() != 0) as bar:
        for indices in streams:
            first, n_crops, label, synth = [], [], [], []
            for i in indices:
                record = shards[int(i)]
                c = record.features.shape[0]
                table[row:row + c] = resample_segments(record.features, segments).astype(dtype)
                for name, field_table in field_tables.items():
                    field_table[video] = resample_segments(record.segment_fields[name], segments).astype(dtype)
                video += 1
                first.append(row)
                n_crops.append(c)
                label.append(record.label)
                synth.append(record.source == "pseudo")
                row += c
                bar.update()
            first_rows.append(np.asarray(first, np.int32))
            crops.append(np.asarray(n_crops, np.int32))
            labels.append(np.asarray(label, np.float32))
            synthetic.append(np.asarray(synth, np.float32))
    starts = np.cumsum([0] + [len(s) for s in streams])
    video_rows = tuple(np.arange(a, b, dtype=np.int32) for a, b in zip(starts[:-1], starts[1:]))
    return ResampledTable(table, tuple(first_rows), tuple(crops), tuple(labels), tuple(synthetic),
                          tuple(np.asarray(s, np.int64) for s in streams), field_tables, video_rows)


def device_budget_bytes(data_config: ml_collections.ConfigDict) -> int:
    """data.device_budget_gb per device: capped at half its memory, or on CPU at RAM/4 over all devices."""
    budget = int(data_config.device_budget_gb * GIB)
    device = jax.local_devices()[0]
    if device.platform == "cpu":  # simulated CPU devices all hold their copy in one host's RAM
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return min(budget, ram // 4) // jax.local_device_count()
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        budget = min(budget, stats["bytes_limit"] // 2)
    return budget


def _resident_mode(value: Any) -> bool | str:
    """data.device_resident as True, False or "auto" (strings from the command line accepted)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[text]
    raise ValueError(f"config.data.device_resident is {value!r}, expected 'auto', true or false")


def use_device_resident(data_config: ml_collections.ConfigDict, shards: ShardSet | None = None) -> bool:
    """Whether training samples on the device: data.device_resident, or "auto" and it fits the budget."""
    mode = _resident_mode(data_config.device_resident)
    if mode != "auto":
        return mode
    shards = shards if shards is not None else open_split(data_config, data_config.train_split, verify=False)
    nbytes = resampled_table_bytes(shards, select_streams(shards, data_config), data_config.segments,
                                   table_dtype(data_config))
    return nbytes <= device_budget_bytes(data_config)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceResidentSampler:
    """The pre-resampled training set on the device and a jittable `sample(step)`.

    A pytree: pass it into the jitted train step as an argument (closing over it would bake the
    table into the program as a constant). `sample(step)` returns the *global* batch of that
    step, the one the grain iterator yields as its step-th batch (`pavad_jax.data.order`): rows
    normal, abnormal, pseudo-normal with data.batch counts, features cast to float32.
    Per used stream, its units: the table row of each (crop 0 of a video for
    sample_unit="video"), the crops a draw chooses among, label and synthetic flag.
    """

    table: jax.Array  # (rows, T, D) at data.table_dtype
    unit_row: tuple[jax.Array, ...]
    unit_span: tuple[jax.Array, ...]
    label: tuple[jax.Array, ...]
    synthetic: tuple[jax.Array, ...]
    orders: tuple[order.StreamOrder, ...] = dataclasses.field(metadata=dict(static=True))
    stream_ids: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    fields: dict = dataclasses.field(default_factory=dict)  # {name: (videos, T, E)} per-segment fields
    unit_video: tuple[jax.Array, ...] = ()  # per used stream, each unit's row in `fields`
    all_crops: int = dataclasses.field(default=0, metadata=dict(static=True))  # crops per row ('all_crops'), or 0

    @classmethod
    def from_table(cls, host: ResampledTable, counts: Sequence[int], *, sharding: jax.sharding.Sharding | None = None,
                   sample_unit: str = "crop", seed: int = 2022) -> "DeviceResidentSampler":
        """Move a host table to the device(s) (`sharding`, e.g. replicated over the mesh, or the default
        device), ordered by `sample_unit` and the data seed `seed` (data.sample_unit, data.seed)."""
        put = lambda x: jax.device_put(x, sharding)
        rows, spans, labels, synthetic, orders, stream_ids, videos = [], [], [], [], [], [], []
        for stream_id, plan in enumerate(_stream_orders(host.crops, counts, sample_unit, seed)):
            if plan is None:
                continue
            units, stream_order = plan
            rows.append(host.first_row[stream_id][units.video] + units.crop)
            spans.append(units.span)
            labels.append(host.label[stream_id][units.video])
            synthetic.append(host.synthetic[stream_id][units.video])
            orders.append(stream_order)
            stream_ids.append(stream_id)
            if host.video_row:
                videos.append(host.video_row[stream_id][units.video])
        all_crops = 0
        if sample_unit == "all_crops":
            counts_seen = sorted({int(c) for stream_crops in host.crops for c in stream_crops})
            if len(counts_seen) > 1:
                raise ValueError(f"config.data.sample_unit = 'all_crops' stacks every crop of a video, but the "
                                 f"training videos have different crop counts {counts_seen}")
            all_crops = counts_seen[0]
        return cls(put(host.table), tuple(map(put, rows)), tuple(map(put, spans)), tuple(map(put, labels)),
                   tuple(map(put, synthetic)), tuple(orders), tuple(stream_ids),
                   {name: put(t) for name, t in host.fields.items()}, tuple(map(put, videos)) if host.fields else (),
                   all_crops)

    @classmethod
    def from_config(cls, data_config: ml_collections.ConfigDict, *, sharding: jax.sharding.Sharding | None = None,
                    shards: ShardSet | None = None, fields: Sequence[str] = ()) -> "DeviceResidentSampler":
        """Read and resample the training split of `data_config` (and the per-segment `fields`)
        and put it on the device(s)."""
        shards = shards if shards is not None else open_split(data_config, data_config.train_split)
        host = build_resampled_table(shards, select_streams(shards, data_config), data_config.segments,
                                     table_dtype(data_config), fields)
        return cls.from_table(host, stream_counts(data_config), sharding=sharding,
                              sample_unit=data_config.sample_unit, seed=int(data_config.seed))

    @property
    def nbytes(self) -> int:
        """Bytes of the resampled table (per device holding a full copy)."""
        return self.table.size * self.table.dtype.itemsize

    def sample(self, step: jax.Array | int) -> dict[str, jax.Array]:
        """The global training batch of step `step` (a traced int32 under jit); the same on every call."""
        rows, labels, synthetic, streams, videos = [], [], [], [], []
        for i, (stream_id, stream_order) in enumerate(zip(self.stream_ids, self.orders)):
            positions, units = stream_order.step_units(step)
            crop = stream_order.crop_offsets(positions, self.unit_span[i][units], jnp)
            rows.append(self.unit_row[i][units] + crop)
            labels.append(self.label[i][units])
            synthetic.append(self.synthetic[i][units])
            streams.append(jnp.full((stream_order.count,), stream_id, jnp.int32))
            if self.fields:
                videos.append(self.unit_video[i][units])
        rows = jnp.concatenate(rows)
        if self.all_crops:  # every crop of each video: (B, crops, T, D)
            rows = rows[:, None] + jnp.arange(self.all_crops, dtype=rows.dtype)
        return {
            "features": jnp.take(self.table, rows, axis=0).astype(jnp.float32),
            "label": jnp.concatenate(labels),
            "synthetic": jnp.concatenate(synthetic),
            "stream": jnp.concatenate(streams),
            **{name: jnp.take(t, jnp.concatenate(videos), axis=0).astype(jnp.float32)
               for name, t in self.fields.items()},
        }


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class EvalSet:
    """Metadata of the test videos, in the split's record order (the order of `video` indices)."""

    ids: list[str]
    lengths: np.ndarray  # (V,) int64: T of each video (segments)
    labels: np.ndarray  # (V,) int64: video label
    anomaly_classes: list[str]
    frame_labels: list[np.ndarray]  # V arrays (T*16,) uint8, aligned to the features
    crops: int
    feature_dim: int

    def __len__(self) -> int:
        return len(self.ids)

    def frame_ground_truth(self) -> np.ndarray:
        """All videos' frame labels concatenated in order: the protocol's ground truth."""
        return np.concatenate(self.frame_labels) if self.frame_labels else np.zeros(0, np.uint8)


def bucket_length(length: int, buckets: Sequence[int], max_padding: float = 0.125) -> int:
    """The row length of a video: the smallest bucket holding it; beyond the largest, the length
    rounded up to a multiple of a power-of-two granule, 16 to 128 and at most max_padding *
    length (so the padding stays under that fraction; attention's work grows with the square of
    the row, so the longest videos are padded least)."""
    buckets = sorted(int(b) for b in buckets)
    for b in buckets:
        if length <= b:
            return b
    granule = 2 ** min(7, max(4, int(math.floor(math.log2(max(1.0, max_padding * length))))))
    return math.ceil(length / granule) * granule


@dataclasses.dataclass(frozen=True)
class EvalRow:
    """One row of an evaluation batch: `videos` packed at `starts` into `length` segments."""

    length: int
    videos: tuple[int, ...]
    starts: tuple[int, ...]


def pack_eval_rows(lengths: Sequence[int], buckets: Sequence[int], max_padding: float = 0.125) -> list[EvalRow]:
    """Every video in a row: best-fit decreasing into rows of bucket lengths.

    Videos go longest first into the open row with the least room that still holds them, or
    else a new row of `bucket_length`; short videos thus fill the ends of longer rows before
    rows of their own bucket open. A video longer than every bucket gets its own row.
    """
    largest = max(int(b) for b in buckets)
    rows: list[list] = []  # [length, used, videos, starts]
    for video in sorted(range(len(lengths)), key=lambda v: (-int(lengths[v]), v)):
        t = int(lengths[video])
        fits = [row for row in rows if row[0] - row[1] >= t and t <= largest]
        if fits:
            row = min(fits, key=lambda r: r[0] - r[1])
        else:
            row = [bucket_length(t, buckets, max_padding), 0, [], []]
            rows.append(row)
        row[2].append(video)
        row[3].append(row[1])
        row[1] += t
    return [EvalRow(length, tuple(videos), tuple(starts)) for length, _, videos, starts in rows]


def bucket_batch_size(bucket: int, data_config: ml_collections.ConfigDict, multiple: int = 1) -> int:
    """Rows per batch of a row length: eval_batch_size * shortest / bucket (>= 1), rounded up to `multiple`."""
    shortest = min(int(b) for b in data_config.eval_buckets)
    size = max(1, data_config.eval_batch_size * shortest // bucket)
    return math.ceil(size / multiple) * multiple


def _eval_frame_labels(shards: ShardSet, index: int) -> np.ndarray:
    """Frame labels aligned to T*16: the stored ones, or zeros for a normal video without them
    (read without the features: evaluation reads those batch by batch)."""
    entry = shards.entries[index]
    length = entry["T"] * SEGMENT_FRAMES
    stored = shards.frame_labels(index)
    if stored is not None:
        return align_labels(stored, length)
    if entry["label"] == 0:
        return np.zeros(length, np.uint8)
    raise ValueError(f"{shards.path}: record {index} (id {entry['id']!r}): field 'frame_labels' is absent "
                     "on an abnormal test video; evaluation needs its frame-level ground truth")


def _plan_eval_batches(lengths: np.ndarray, data_config: ml_collections.ConfigDict, multiple: int
                       ) -> list[list[EvalRow | None]]:
    """The rows of every batch (None: an empty padding row), batches of one row length together."""
    rows = pack_eval_rows(lengths, data_config.eval_buckets, data_config.eval_max_padding)
    plan = []
    for length in sorted({row.length for row in rows}):
        same = [row for row in rows if row.length == length]
        size = bucket_batch_size(length, data_config, multiple)
        for start in range(0, len(same), size):
            chunk = same[start:start + size]
            plan.append(chunk + [None] * (size - len(chunk)))
    return plan


class EvalBatches:
    """This host's evaluation batches, read from the test shards as they are iterated.

    Each batch is a dict: features (b, crops, L, D) in the shards' dtype (float16 usually; the
    scorer casts), segment_ids (b, L) int32 (k = the row's k-th video, 0 = padding), video and
    start (b, S) int32: the videos of each row (EvalSet indices, -1 = none) and their first
    segment. Only one batch (and the next, read ahead on a thread) is in memory at a time.
    """

    def __init__(self, shards: ShardSet, plan: list[list[EvalRow | None]], lengths: np.ndarray, crops: int,
                 process_index: int, process_count: int, fields: Sequence[str] = ()):
        self.fields = tuple(fields)  # per-segment fields packed like the features: (b, L, E)
        self.shards = shards
        self.plan = plan
        self.lengths = lengths
        self.crops = crops
        self.process_index = process_index
        self.process_count = process_count

    def __len__(self) -> int:
        return len(self.plan)

    def host_rows(self, rows: list) -> list:
        """This host's slice of a batch's rows."""
        n = len(rows)
        return rows[self.process_index * n // self.process_count:(self.process_index + 1) * n // self.process_count]

    @property
    def segments(self) -> int:
        """Segments of the whole test set (all hosts)."""
        return int(self.lengths.sum())

    def shapes(self) -> list[tuple[int, int]]:
        """(rows, row length) of every batch (all hosts): one compiled scorer program per distinct one."""
        return [(len(rows), next(r.length for r in rows if r is not None)) for rows in self.plan]

    def read(self, index: int) -> dict[str, np.ndarray]:
        """Batch `index` of this host, read from the shards."""
        rows = self.plan[index]
        length = next(r.length for r in rows if r is not None)
        slots = max(len(r.videos) for r in rows if r is not None)  # the same on every host
        mine = self.host_rows(rows)
        batch = {
            "features": np.zeros((len(mine), self.crops, length, self.shards.feature_dim), self.shards.dtype),
            "segment_ids": np.zeros((len(mine), length), np.int32),
            "video": np.full((len(mine), slots), -1, np.int32),
            "start": np.zeros((len(mine), slots), np.int32),
            **{name: np.zeros((len(mine), length, self.shards.segment_fields[name]), self.shards.dtype)
               for name in self.fields},
        }
        for i, row in enumerate(mine):
            for slot, (video, start) in enumerate(zip(row.videos, row.starts) if row is not None else ()):
                t = int(self.lengths[video])
                record = self.shards[video]
                batch["features"][i, :, start:start + t] = record.features
                for name in self.fields:
                    batch[name][i, start:start + t] = record.segment_fields[name]
                batch["segment_ids"][i, start:start + t] = slot + 1
                batch["video"][i, slot], batch["start"][i, slot] = video, start
        return batch

    def __iter__(self):
        if not self.plan:
            return
        with ThreadPoolExecutor(1) as reader:  # reads batch i + 1 while batch i is scored
            ahead = reader.submit(self.read, 0)
            for index in range(len(self.plan)):
                batch = ahead.result()
                if index + 1 < len(self.plan):
                    ahead = reader.submit(self.read, index + 1)
                yield batch


def make_eval_batches(data_config: ml_collections.ConfigDict, *, split: str | None = None, process_index: int = 0,
                      process_count: int = 1, batch_multiple: int = 1, shards: ShardSet | None = None,
                      fields: Sequence[str] = ()) -> tuple[EvalBatches, EvalSet]:
    """This host's evaluation batches of full-length test videos, and the test set's metadata.

    Videos are packed into rows of bucket lengths (see `pack_eval_rows`); rows of one length are
    batched together with a fixed number of rows per batch, a multiple of `batch_multiple` (pass
    the device count to shard rows over the mesh) and of `process_count`. Every host gets the
    same batches, each with its b = B / process_count rows, so
    ``jax.make_array_from_process_local_data`` builds the global batch. Features are read when
    the batches are iterated (`EvalBatches`); here only the metadata and frame labels. Each name
    in `fields` (per-segment fields of the shards) is packed into the batches like the features.
    """
    split = data_config.test_split if split is None else split
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside [0, process_count={process_count})")
    if not data_config.eval_buckets or min(data_config.eval_buckets) <= 0:
        raise ValueError(f"config.data.eval_buckets must be positive lengths, got {data_config.eval_buckets!r}")
    if data_config.eval_batch_size <= 0:
        raise ValueError(f"config.data.eval_batch_size must be > 0, got {data_config.eval_batch_size}")
    if not 0 < data_config.eval_max_padding <= 1:
        raise ValueError(f"config.data.eval_max_padding must be in (0, 1], got {data_config.eval_max_padding}")
    shards = shards if shards is not None else open_split(data_config, split)
    check_fields(shards, fields)
    crop_counts = sorted({e["crops"] for e in shards.entries})
    if len(crop_counts) != 1:
        raise ValueError(f"{shards.path}: test videos must share one crop count, found crops={crop_counts}")
    crops, dim = crop_counts[0], shards.feature_dim
    lengths = np.asarray([e["T"] for e in shards.entries], np.int64)
    plan = _plan_eval_batches(lengths, data_config, math.lcm(batch_multiple, process_count))
    frame_labels = [_eval_frame_labels(shards, i)
                    for i in tqdm(range(len(shards)), desc=f"reading {split} labels", unit="video",
                                  disable=process_index != 0)]
    eval_set = EvalSet(
        ids=[e["id"] for e in shards.entries], lengths=lengths,
        labels=np.asarray([e["label"] for e in shards.entries], np.int64),
        anomaly_classes=[e["anomaly_class"] for e in shards.entries], frame_labels=frame_labels,
        crops=crops, feature_dim=dim)
    return EvalBatches(shards, plan, lengths, crops, process_index, process_count, fields), eval_set


def device_memory_bytes() -> int | None:
    """Memory of the first local device where JAX reports it (bytes_limit); the host's RAM on CPU."""
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return int(limit) if limit else None


def eval_memory_budget(data_config: ml_collections.ConfigDict) -> int:
    """Bytes per device the scorer may use: data.eval_memory_gb, or 10 % of the host memory on CPU
    (all of its simulated devices together), half of the device memory on accelerators (8 GiB
    where JAX reports none)."""
    if data_config.eval_memory_gb:
        return int(data_config.eval_memory_gb * GIB)
    total = device_memory_bytes()
    if jax.local_devices()[0].platform == "cpu":
        return total // 10 // jax.local_device_count()
    return total // 2 if total else 8 * GIB


def eval_concurrency(data_config: ml_collections.ConfigDict, mesh) -> int:
    """Evaluation batches scored at once, each on its own thread: data.eval_concurrency, or (0)
    2 on a one-device CPU mesh and 1 elsewhere. XLA:CPU leaves cores idle between and inside the
    small ops of one program; a second program in flight fills them (2-core Xeon, UR-DMU on 10
    crops: 6-17 % faster per batch). Several processes always score one batch at a time: their
    batches end in collectives that every process must enter in the same order."""
    asked = int(data_config.get("eval_concurrency", 0))
    if asked < 0:
        raise ValueError(f"config.data.eval_concurrency must be >= 0 (0 = automatic), got {asked}")
    if jax.process_count() > 1:
        return 1
    if asked:
        return asked
    return 2 if mesh.devices.size == 1 and jax.local_devices()[0].platform == "cpu" else 1


# ----------------------------------------------------------------------------- command line


def time_per_call(next_batch, steps: int) -> float:
    """Mean wall seconds of `steps` calls after one warm-up call."""
    jax.block_until_ready(next_batch())
    start = time.perf_counter()
    for _ in range(steps):
        out = next_batch()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def main(argv: Sequence[str] | None = None) -> None:
    """Times both training paths and the evaluation loading on a dataset folder."""
    parser = argparse.ArgumentParser(
        prog="python -m pavad_jax.data.pipeline",
        description="Measure the input pipelines on a dataset folder (train/ and test/ shard sets): "
                    "grain ms/step, device-resident table size and sample ms/step, evaluation buckets.")
    parser.add_argument("data", help="dataset folder holding train/ and test/")
    parser.add_argument("--segments", type=int, default=200, help="T, segments per training video (default 200)")
    parser.add_argument("--batch", default="64,64,0", help="normal,abnormal,pseudo_normal videos per step")
    parser.add_argument("--abnormal_source", default="pseudo", choices=_SOURCES["abnormal_source"])
    parser.add_argument("--steps", type=int, default=10, help="steps to time per path")
    parser.add_argument("--workers", type=int, default=0, help="grain worker processes (data.worker_count)")
    parser.add_argument("--threads", type=int, default=4, help="grain read threads (data.read_threads)")
    args = parser.parse_args(argv)
    config = default_data_config()
    config.dir, config.segments, config.abnormal_source = args.data, args.segments, args.abnormal_source
    config.worker_count, config.read_threads = args.workers, args.threads
    try:
        config.batch.normal, config.batch.abnormal, config.batch.pseudo_normal = map(int, args.batch.split(","))
    except ValueError:
        parser.error(f"--batch must be three comma-separated ints, got {args.batch!r}")
    shards = open_split(config, config.train_split)
    print(f"{shards}; streams {[len(s) for s in select_streams(shards, config)]} videos")
    iterator = make_train_iterator(config, shards=shards)
    print(f"grain: {time_per_call(lambda: next(iterator), args.steps) * 1e3:.1f} ms/step")
    print(f"device-resident under data.device_resident='auto': {use_device_resident(config, shards)}")
    sampler = DeviceResidentSampler.from_config(config, shards=shards)
    sample = jax.jit(lambda s, step: s.sample(step))
    steps = iter(range(args.steps + 1))
    print(f"device table {sampler.nbytes / 2**20:.1f} MiB on {jax.devices()[0].platform}, "
          f"sample: {time_per_call(lambda: sample(sampler, next(steps)), args.steps) * 1e3:.2f} ms/step")
    batches, eval_set = make_eval_batches(config, batch_multiple=jax.device_count())
    shapes = sorted(set(batches.shapes()), key=lambda s: s[1])
    padded = sum(rows * length for rows, length in batches.shapes())
    print(f"eval: {len(eval_set)} videos in {len(batches)} batches of (rows, length) {shapes}, "
          f"{batches.segments / padded:.1%} of the padded segments are real")


if __name__ == "__main__":
    main()
