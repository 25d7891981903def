"""Which training sample fills each row of each step: one order, computed alike on the host and on the device.

A stream (normal, abnormal, pseudo-normal) is a list of *units* (`stream_units`):
- data.sample_unit = "crop" (the reference's loaders): every (video, crop) pair is a unit, so
  an epoch is a shuffled pass over crop sequences (UCF-Crime: 16,100 of them);
- "video": every video is a unit and each draw takes one of its crops uniformly;
- "all_crops": every video is a unit and a row holds all of its crops (RTFM, LAP: (crops, T, D)).
Position k of a stream (its k-th row overall, step s taking positions [s*n, (s+1)*n) for n
rows a step) lies in epoch k // usable, at offset k % usable of that epoch's permutation of
the units; `usable` drops each epoch's remainder (drop_last), unless the stream has fewer units
than one step's rows (tiny datasets: steps then run over epoch boundaries). Streams run through
their epochs independently, as the reference's loaders restart independently.

The epoch permutation sorts threefry-2x32 random bits of the unit indices under a key derived
from (data.seed, stream, epoch), with a stable sort (ties, 32-bit collisions, break by index);
the crop of a "video" draw is random bits of the position modulo the video's crop count.
`random_bits.threefry2x32` computes the same bits on numpy arrays and on jnp arrays, so the grain
path (numpy, one position at a time) and the device-resident path (jnp, a traced step) produce
the same rows bit for bit, and nothing depends on the model's seed. A permutation costs one
sort of the stream's units per step on the device (UCF-Crime's 8,000 + 8,100 crops: 14 ms on
a shared 2-core CPU, small beside that step's seconds).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from pavad_jax.random_bits import threefry2x32

SAMPLE_UNITS = ("crop", "video", "all_crops")


def check_sample_unit(unit: str) -> str:
    if unit not in SAMPLE_UNITS:
        raise ValueError(f"config.data.sample_unit is {unit!r}, expected one of {SAMPLE_UNITS}")
    return unit


@dataclasses.dataclass(frozen=True)
class StreamUnits:
    """The units of one stream, indexing its videos (in stream order) and their crops."""

    video: np.ndarray  # (units,) int32: the unit's video, an index into the stream's videos
    crop: np.ndarray  # (units,) int32: its crop ("crop") or 0 ("video")
    span: np.ndarray  # (units,) int32: crops a draw chooses among: 1 ("crop") or the video's count

    def __len__(self) -> int:
        return len(self.video)


def stream_units(crops_per_video: np.ndarray, unit: str) -> StreamUnits:
    """The units of a stream whose videos have `crops_per_video` crops; crops of a video are consecutive."""
    crops = np.asarray(crops_per_video, np.int32)
    if check_sample_unit(unit) == "all_crops":
        return StreamUnits(np.arange(len(crops), dtype=np.int32), np.zeros_like(crops), np.ones_like(crops))
    if unit == "video":
        return StreamUnits(np.arange(len(crops), dtype=np.int32), np.zeros_like(crops), crops)
    video = np.repeat(np.arange(len(crops), dtype=np.int32), crops)
    first = np.cumsum(crops) - crops  # the first unit of each video
    crop = (np.arange(len(video)) - np.repeat(first, crops)).astype(np.int32)
    return StreamUnits(video, crop, np.ones_like(video))


def _random_bits(key: tuple[Any, Any], counters, xp) -> Any:
    """uint32 threefry bits of `counters` under `key` (equal to jax.random.bits for that key)."""
    counters = xp.asarray(counters, xp.uint32)
    high, low = threefry2x32(key[0], key[1], xp.zeros_like(counters), counters)
    return high ^ low


@dataclasses.dataclass(frozen=True)
class StreamOrder:
    """The positions -> units map of one stream (static: hashable, a jit constant)."""

    units: int
    count: int  # rows of this stream in one global step
    usable: int  # units taken from each epoch's permutation
    shuffle_key: tuple[int, int]
    crop_key: tuple[int, int]

    @classmethod
    def make(cls, units: int, count: int, *, seed: int, stream_id: int) -> "StreamOrder":
        if units < 1 or count < 1:
            raise ValueError(f"a stream needs units >= 1 and count >= 1, got {units} and {count}")
        words = np.random.SeedSequence([int(seed), int(stream_id)]).generate_state(4)
        usable = units // count * count or units
        return cls(int(units), int(count), int(usable), (int(words[0]), int(words[1])), (int(words[2]), int(words[3])))

    def _epoch_key(self, epoch, xp) -> tuple[Any, Any]:
        k0, k1 = (xp.asarray(w, xp.uint32) for w in self.shuffle_key)
        epoch = xp.asarray(epoch, xp.uint32).reshape(1)  # arrays: numpy scalars would warn on wrap-around
        e0, e1 = threefry2x32(k0, k1, xp.zeros_like(epoch), epoch)
        return e0[0], e1[0]

    def permutation(self, epoch, xp=np) -> Any:
        """The units in the order of epoch `epoch` (int32, all of them; the epoch uses the first `usable`)."""
        bits = _random_bits(self._epoch_key(epoch, xp), xp.arange(self.units, dtype=xp.uint32), xp)
        if xp is np:
            return np.argsort(bits, kind="stable").astype(np.int32)
        return jnp.argsort(bits, stable=True).astype(jnp.int32)

    def crop_offsets(self, positions, span, xp=np) -> Any:
        """The crop drawn at each position among `span` crops (0 where span is 1)."""
        key = tuple(xp.asarray(w, xp.uint32) for w in self.crop_key)
        bits = _random_bits(key, positions, xp)
        return (bits % xp.asarray(span, xp.uint32)).astype(xp.int32)

    def epochs_per_step(self) -> int:
        """Most epochs the `count` positions of one step can touch (1 unless the stream is smaller than a step)."""
        if self.usable % self.count == 0:
            return 1
        return (self.count - 1) // self.usable + 2

    def step_units(self, step) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(positions, units) of the `count` rows of global step `step` (jittable: `step` may be traced)."""
        step = jnp.asarray(step, jnp.int32)
        positions = step * self.count + jnp.arange(self.count, dtype=jnp.int32)
        first_epoch = (step * self.count) // self.usable
        perms = jnp.stack([self.permutation(first_epoch + i, jnp) for i in range(self.epochs_per_step())])
        units = perms[positions // self.usable - first_epoch, positions % self.usable]
        return positions, units
