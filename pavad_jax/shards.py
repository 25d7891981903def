"""The feature-shard format: one record per video in ArrayRecord files plus a JSON manifest.

This module is the only contract between the generation side (PyTorch) and the training side
(JAX), so it imports numpy, array_record and the standard library only.

A *shard set* is a folder holding ``manifest.json`` and ``part-NNNNN.array_record`` files.
Each ArrayRecord record is one video, serialised as::

    b"PVR1" | uint32 little-endian header length | JSON header (space-padded to 8 bytes)
    | features, raw little-endian bytes, C order | frame labels, raw uint8 bytes (optional)

so that reading a record is one ``json.loads`` of a few hundred bytes plus ``np.frombuffer``.
Optional named per-segment fields (e.g. LAP's ``caption_embedding``, (T, E)) follow the
features in the header's order, in the features' dtype; the manifest lists them
(``segment_fields``: {name: E}) and every record of the set carries all of them.
The manifest is written last (temp file + ``os.replace``); a folder without it is not a shard
set, so a crash mid-write never leaves a readable half-written set. See docs/data.md.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import struct
import threading
import zlib
from typing import Any, Callable, Iterable

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from pavad_jax import atomic

STREAMS = ("normal", "abnormal", "pseudo-normal")
SOURCES = ("real", "pseudo")
DTYPES = ("float16", "float32")
FORMAT_NAME = "pavad-shards"
FORMAT_VERSION = 1
UNKNOWN = "unknown"  # provenance of manifests written before it was recorded, or not given
MANIFEST = "manifest.json"
# Files whose checksum was verified, keyed by name: their size, mtime and the manifest's sha256.
# Opening a dataset re-hashes only files that changed since (pavad-data validate hashes all).
STAMP = "verified.json"
SEGMENT_FRAMES = 16  # frames per I3D snippet: frame labels of a video with T snippets span T*16 frames

_MAGIC = b"PVR1"
_PREFIX = struct.Struct("<4sI")
# One record per riegeli chunk (random access) and no compression: float features barely
# compress, and zstd makes reads ~6x slower.
_WRITER_OPTIONS = "group_size:1,uncompressed"
# A video's bytes are stored as consecutive ArrayRecord records of at most this size: riegeli
# reads records much larger than its 64 KiB blocks several times slower per byte (extra
# copies and buffer growth), 256 KiB pieces read fastest (benchmarks/shard_read.py).
PIECE_BYTES = 256 * 1024
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
_LABEL_OF_STREAM = {"normal": 0, "abnormal": 1, "pseudo-normal": 0}


class ShardError(ValueError):
    """A shard set or a record is malformed; the message names the file, record and field."""


@dataclasses.dataclass
class VideoRecord:
    """One video: its features and the metadata the samplers and evaluation need."""

    id: str
    features: np.ndarray  # (crops, T, D) float16 or float32
    label: int  # 0 normal, 1 abnormal
    source: str  # "real" | "pseudo"
    stream: str  # "normal" | "abnormal" | "pseudo-normal"
    anomaly_class: str  # "normal" for normal videos
    num_frames: int
    frame_labels: np.ndarray | None = None  # (num_frames,) uint8
    # Optional per-segment fields, {name: (T, E) float}: e.g. caption_embedding (LAP, TEVAD).
    segment_fields: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def aligned_frame_labels(record: VideoRecord, segment_frames: int = SEGMENT_FRAMES) -> np.ndarray:
    """Frame labels aligned to the features: exactly T*segment_frames uint8 labels.

    The importers already store labels aligned this way (num_frames == T*16); records written
    from raw videos may hold more or fewer frames. Too long: truncate; too short: pad with the
    last label (the convention of the public ground-truth files).
    """
    if record.frame_labels is None:
        raise ShardError(f"record {record.id!r}: field 'frame_labels' is absent (training videos carry none)")
    return align_labels(np.asarray(record.frame_labels, np.uint8), record.features.shape[1] * segment_frames)


def align_labels(labels: np.ndarray, length: int) -> np.ndarray:
    """Truncate `labels` to `length`, or pad it with its last value (0 when empty)."""
    labels = np.asarray(labels, np.uint8)
    if labels.shape[0] >= length:
        return labels[:length].copy()
    fill = labels[-1] if labels.shape[0] else 0
    return np.concatenate([labels, np.full(length - labels.shape[0], fill, np.uint8)])


# ----------------------------------------------------------------------------- serialisation


def _record_problems(record: VideoRecord) -> list[str]:
    """Metadata problems of one record (not features), each naming the field."""
    problems = []
    if not isinstance(record.id, str) or not record.id:
        problems.append(f"field 'id' must be a non-empty string, got {record.id!r}")
    if record.stream not in STREAMS:
        problems.append(f"field 'stream' is {record.stream!r}, expected one of {STREAMS}")
    if record.source not in SOURCES:
        problems.append(f"field 'source' is {record.source!r}, expected one of {SOURCES}")
    if record.label not in (0, 1) or isinstance(record.label, bool):
        problems.append(f"field 'label' is {record.label!r}, expected 0 or 1")
    elif record.stream in STREAMS and _LABEL_OF_STREAM[record.stream] != record.label:
        problems.append(
            f"field 'label' is {record.label} but stream {record.stream!r} needs label {_LABEL_OF_STREAM[record.stream]}"
        )
    if record.stream == "pseudo-normal" and record.source != "pseudo":
        problems.append(f"field 'source' is {record.source!r} but stream 'pseudo-normal' needs source 'pseudo'")
    if not isinstance(record.anomaly_class, str) or not record.anomaly_class:
        problems.append(f"field 'anomaly_class' must be a non-empty string, got {record.anomaly_class!r}")
    elif record.label == 0 and record.anomaly_class != "normal":
        problems.append(f"field 'anomaly_class' is {record.anomaly_class!r} but a normal video has class 'normal'")
    elif record.label == 1 and record.anomaly_class == "normal":
        problems.append("field 'anomaly_class' is 'normal' on an abnormal video")
    if not isinstance(record.num_frames, (int, np.integer)) or record.num_frames < 0:
        problems.append(f"field 'num_frames' must be a non-negative int, got {record.num_frames!r}")
    elif record.frame_labels is not None:
        fl = np.asarray(record.frame_labels)
        if fl.ndim != 1 or fl.shape[0] != record.num_frames:
            problems.append(f"field 'frame_labels' has shape {fl.shape}, expected ({record.num_frames},) = num_frames")
        elif fl.size and (not np.all(np.isfinite(fl)) or not np.isin(fl, (0, 1)).all()):
            problems.append("field 'frame_labels' must hold only 0 and 1")
    return problems


def _feature_problems(features: Any, feature_dim: int | None) -> list[str]:
    """Problems of a features array: not 3-D, empty, wrong D, non-finite."""
    if not isinstance(features, np.ndarray):
        return [f"field 'features' must be a numpy array, got {type(features).__name__}"]
    if features.ndim != 3:
        return [f"field 'features' has shape {features.shape}, expected 3-D (crops, T, D)"]
    if min(features.shape) == 0:
        return [f"field 'features' has an empty axis: shape {features.shape}"]
    if feature_dim is not None and features.shape[2] != feature_dim:
        return [f"field 'features' has D={features.shape[2]}, but this shard set has feature_dim={feature_dim}"]
    if not np.issubdtype(features.dtype, np.floating):
        return [f"field 'features' has dtype {features.dtype}, expected a float dtype"]
    if not np.isfinite(features).all():
        return [f"field 'features' holds {int(np.size(features) - np.isfinite(features).sum())} NaN/inf values"]
    return []


def _segment_field_problems(record: VideoRecord, expected: dict[str, int] | None) -> list[str]:
    """Problems of a record's per-segment fields: each (T, E) float, finite, T the features' T;
    with `expected` ({name: E} of the set) exactly those names and widths."""
    fields = record.segment_fields or {}
    if not isinstance(fields, dict):
        return [f"field 'segment_fields' must be a dict of name -> (T, E) array, got {type(fields).__name__}"]
    problems = []
    t = record.features.shape[1] if isinstance(record.features, np.ndarray) and record.features.ndim == 3 else None
    for name, value in sorted(fields.items()):
        value = np.asarray(value)
        if not isinstance(name, str) or not name.isidentifier() or name in ("features", "frame_labels"):
            problems.append(f"field 'segment_fields': bad name {name!r} (an identifier other than features)")
        elif value.ndim != 2 or (t is not None and value.shape[0] != t) or value.shape[1] == 0:
            problems.append(f"field {name!r} has shape {value.shape}, expected (T, E) with T = {t} (the features' T)")
        elif not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
            problems.append(f"field {name!r} must hold finite floats")
        elif expected is not None and name in expected and value.shape[1] != expected[name]:
            problems.append(f"field {name!r} has E={value.shape[1]}, but this shard set has {name}={expected[name]}")
    if expected is not None and set(fields) != set(expected):
        problems.append(f"field 'segment_fields' has {sorted(fields)}, but every record of this shard set "
                        f"carries {sorted(expected)}")
    return problems


def encode_record(record: VideoRecord, dtype: str = "float16") -> bytes:
    """Serialise a (validated) record to bytes: magic, header length, JSON header, raw arrays."""
    features = np.ascontiguousarray(record.features, dtype=np.dtype(dtype).newbyteorder("<"))
    fields = {name: np.ascontiguousarray(value, dtype=features.dtype)
              for name, value in sorted((record.segment_fields or {}).items())}
    header = {
        "id": record.id,
        "label": int(record.label),
        "source": record.source,
        "stream": record.stream,
        "anomaly_class": record.anomaly_class,
        "num_frames": int(record.num_frames),
        "shape": list(features.shape),
        "dtype": dtype,
        "has_frame_labels": record.frame_labels is not None,
    }
    if fields:
        header["segment_fields"] = [[name, int(value.shape[1])] for name, value in fields.items()]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + _PREFIX.size) % 8)  # 8-byte aligned feature bytes
    parts = [_PREFIX.pack(_MAGIC, len(text)), text, features.tobytes(), *(v.tobytes() for v in fields.values())]
    if record.frame_labels is not None:
        parts.append(np.ascontiguousarray(record.frame_labels, np.uint8).tobytes())
    return b"".join(parts)


def _decode_header(data: bytes) -> tuple[dict, int]:
    """(JSON header, offset of the feature bytes) of a serialised record's first bytes."""
    if len(data) < _PREFIX.size:
        raise ShardError(f"field 'header': record is {len(data)} bytes, too short")
    magic, header_len = _PREFIX.unpack_from(data)
    if magic != _MAGIC:
        raise ShardError(f"field 'header': bad magic {magic!r}, expected {_MAGIC!r}")
    start = _PREFIX.size + header_len
    try:
        header = json.loads(data[_PREFIX.size : start])
    except ValueError as e:
        raise ShardError(f"field 'header': cannot parse ({e})") from e
    if not isinstance(header, dict):
        raise ShardError(f"field 'header': cannot parse (not a JSON object)")
    return header, start


def decode_record(data: bytes) -> VideoRecord:
    """Inverse of `encode_record`; raises ShardError (without file context) on malformed bytes."""
    header, start = _decode_header(data)
    try:
        shape = tuple(int(n) for n in header["shape"])
        dtype = np.dtype(header["dtype"]).newbyteorder("<")
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"field 'header': cannot parse ({e})") from e
    try:
        field_dims = [(str(name), int(dim)) for name, dim in header.get("segment_fields", [])]
    except (ValueError, TypeError) as e:
        raise ShardError(f"field 'segment_fields': cannot parse the header's list ({e})") from e
    n_feature_bytes = math.prod(shape) * dtype.itemsize
    n_field_bytes = sum(shape[1] * dim for _, dim in field_dims) * dtype.itemsize
    n_label_bytes = int(header["num_frames"]) if header.get("has_frame_labels") else 0
    if len(data) != start + n_feature_bytes + n_field_bytes + n_label_bytes:
        raise ShardError(
            f"field 'features': record holds {len(data) - start} data bytes, header promises "
            f"{n_feature_bytes + n_field_bytes + n_label_bytes} (shape {shape}, {dtype.name}, "
            f"segment fields {field_dims})"
        )
    features = np.frombuffer(data, dtype, math.prod(shape), start).reshape(shape)
    offset, segment_fields = start + n_feature_bytes, {}
    for name, dim in field_dims:
        segment_fields[name] = np.frombuffer(data, dtype, shape[1] * dim, offset).reshape(shape[1], dim)
        offset += shape[1] * dim * dtype.itemsize
    frame_labels = None
    if header.get("has_frame_labels"):
        frame_labels = np.frombuffer(data, np.uint8, n_label_bytes, offset)
    return VideoRecord(
        id=header["id"],
        features=features,
        label=header["label"],
        source=header["source"],
        stream=header["stream"],
        anomaly_class=header["anomaly_class"],
        num_frames=header["num_frames"],
        frame_labels=frame_labels,
        segment_fields=segment_fields,
    )


def split_pieces(data: bytes) -> list[bytes]:
    """A serialised video cut into ArrayRecord records of at most PIECE_BYTES."""
    return [data[i : i + PIECE_BYTES] for i in range(0, len(data), PIECE_BYTES)] or [data]


# ----------------------------------------------------------------------------- writing


def file_sha256(path: os.PathLike | str) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ShardWriter:
    """Writes one shard set; use as a context manager, or call close() to get the manifest.

    Every record is validated before it is written (finite 3-D features, one D for the whole
    set, known stream/source/label consistent with each other, frame_labels of num_frames).
    Files are written under a temporary name and renamed when full; manifest.json last.
    If an exception escapes the `with` block, the partial files are removed and no manifest
    is written.
    """

    def __init__(self, out_dir: os.PathLike | str, *, dtype: str = "float16", records_per_file: int = 64,
                 overwrite: bool = False, feature_extractor: str | None = None, protocol: str | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"ShardWriter: dtype is {dtype!r}, expected one of {DTYPES}")
        if records_per_file < 1:
            raise ValueError(f"ShardWriter: records_per_file must be >= 1, got {records_per_file}")
        self.out_dir = pathlib.Path(out_dir)
        self.dtype = dtype
        self.records_per_file = records_per_file
        # Provenance of the features, recorded in the manifest (UNKNOWN when not given).
        self.feature_extractor = feature_extractor or UNKNOWN
        self.protocol = protocol or UNKNOWN
        self.out_dir.mkdir(parents=True, exist_ok=True)
        manifest = self.out_dir / MANIFEST
        if manifest.exists():
            if not overwrite:
                raise FileExistsError(f"{manifest} exists: {self.out_dir} already holds a shard set (pass overwrite=True)")
            self._remove_old_set(manifest)
        self.feature_dim: int | None = None
        self.segment_fields: dict[str, int] | None = None  # {name: E}, set by the first record
        self._files: list[dict] = []
        self._entries: list[dict] = []
        self._ids: set[str] = set()
        self._writer: ArrayRecordWriter | None = None
        self._tmp_path: pathlib.Path | None = None
        self._manifest: dict | None = None

    def _remove_old_set(self, manifest: pathlib.Path) -> None:
        """Invalidate (manifest first) and delete the shard set already in out_dir."""
        try:
            old_files = [f["name"] for f in json.loads(manifest.read_text()).get("files", [])]
        except (ValueError, AttributeError):
            old_files = []
        manifest.unlink()
        for name in old_files:
            (self.out_dir / name).unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, record: VideoRecord) -> None:
        """Validate `record` and append it to the current file; raises ShardError on bad input."""
        if self._manifest is not None:
            raise ShardError(f"{self.out_dir}: write after close")
        where = f"{self.out_dir}: record {len(self._entries)} (id {getattr(record, 'id', None)!r})"
        problems = _record_problems(record) + _feature_problems(record.features, self.feature_dim)
        if not problems:
            problems += _segment_field_problems(record, self.segment_fields)
        if not problems:
            with np.errstate(over="ignore"):
                cast = record.features.astype(self.dtype, copy=False)
            if not np.isfinite(cast).all():
                problems.append(f"field 'features' overflows {self.dtype} (max |x| = {np.abs(record.features).max():g})")
        if record.id in self._ids:
            problems.append(f"field 'id': duplicate id {record.id!r} in this shard set")
        if problems:
            raise ShardError(f"{where}: " + "; ".join(problems))
        if self._writer is None:
            self._open_file()
        data = encode_record(dataclasses.replace(record, features=cast), self.dtype)
        pieces = split_pieces(data)
        for piece in pieces:
            self._writer.write(piece)
        self.feature_dim = int(record.features.shape[2])
        self.segment_fields = {name: int(np.shape(v)[1]) for name, v in sorted(record.segment_fields.items())}
        self._ids.add(record.id)
        crops, t, _ = record.features.shape
        self._entries.append({
            "id": record.id,
            "stream": record.stream,
            "label": int(record.label),
            "source": record.source,
            "anomaly_class": record.anomaly_class,
            "num_frames": int(record.num_frames),
            "crops": int(crops),
            "T": int(t),
            "has_frame_labels": record.frame_labels is not None,
            "file": len(self._files) - 1,
            "position": self._files[-1]["records"],
            "pieces": len(pieces),
            "crc32": zlib.crc32(data),
        })
        self._files[-1]["records"] += len(pieces)
        self._files[-1]["videos"] += 1
        if self._files[-1]["videos"] == self.records_per_file:
            self._finish_file()

    def _open_file(self) -> None:
        """Start the next part file under a temporary name."""
        name = f"part-{len(self._files):05d}.array_record"
        self._tmp_path = self.out_dir / f".{name}.tmp"
        self._writer = ArrayRecordWriter(str(self._tmp_path), _WRITER_OPTIONS)
        self._files.append({"name": name, "videos": 0, "records": 0, "sha256": None, "bytes": None})

    def _finish_file(self) -> None:
        """Close the current part file, checksum it and move it to its final name."""
        self._writer.close()
        self._writer = None
        final = self.out_dir / self._files[-1]["name"]
        self._files[-1].update(sha256=file_sha256(self._tmp_path), bytes=self._tmp_path.stat().st_size)
        os.replace(self._tmp_path, final)
        self._tmp_path = None

    def close(self) -> dict:
        """Finish the last file, write manifest.json atomically and return the manifest."""
        if self._manifest is not None:
            return self._manifest
        if self._writer is not None:
            self._finish_file()
        self._manifest = build_manifest(self._entries, self._files, self.feature_dim, self.dtype,
                                        feature_extractor=self.feature_extractor, protocol=self.protocol,
                                        segment_fields=self.segment_fields)
        atomic.write_text(self.out_dir / MANIFEST, json.dumps(self._manifest, indent=1))
        return self._manifest

    def abort(self) -> None:
        """Drop everything written so far; no manifest is written."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)
        for f in self._files:
            (self.out_dir / f["name"]).unlink(missing_ok=True)
        self._manifest = {}


def build_manifest(entries: list[dict], files: list[dict], feature_dim: int | None, dtype: str, *,
                   feature_extractor: str = "unknown", protocol: str = "unknown",
                   segment_fields: dict[str, int] | None = None) -> dict:
    """The manifest dict: format, counts, feature_dim, dtype, provenance, crops, per-segment
    fields ({name: E}, every record carries them), files and record entries."""
    count = lambda key: dict(sorted(collections.Counter(str(e[key]) for e in entries).items()))
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "num_records": len(entries),
        "feature_dim": feature_dim,
        "dtype": dtype,
        "feature_extractor": feature_extractor,
        "protocol": protocol,
        "crops": sorted({e["crops"] for e in entries}),
        "segment_fields": dict(segment_fields or {}),
        "counts": {
            "stream": count("stream"),
            "label": count("label"),
            "anomaly_class": count("anomaly_class"),
            "source": count("source"),
        },
        "files": files,
        "records": entries,
    }


def write_shard_set(out_dir: os.PathLike | str, records: Iterable[VideoRecord], **kw) -> dict:
    """Write all `records` to a new shard set in `out_dir` and return its manifest."""
    with ShardWriter(out_dir, **kw) as writer:
        for record in records:
            writer.write(record)
    return writer.close()


# ----------------------------------------------------------------------------- reading


def find_shard_sets(path: os.PathLike | str) -> list[pathlib.Path]:
    """Shard-set folders at or below `path` (sorted); raises ShardError when there are none."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ShardError(f"{path}: not a directory")
    if (path / MANIFEST).is_file():
        return [path]
    found = sorted(p.parent for p in path.rglob(MANIFEST))
    if not found:
        stray = sorted(path.rglob("*.array_record"))
        hint = f" ({len(stray)} .array_record files but no manifest: an unfinished or crashed write)" if stray else ""
        raise ShardError(f"{path}: field 'manifest.json' is missing: not a shard set and holds none{hint}")
    return found


def folders_without_manifest(path: os.PathLike | str) -> list[pathlib.Path]:
    """Folders at or below `path` holding .array_record files but no manifest.json (sorted).

    Readers skip such a folder (it is not a shard set), so validate names it.
    """
    return sorted({p.parent for p in pathlib.Path(path).rglob("*.array_record") if not (p.parent / MANIFEST).is_file()})


def load_manifest(set_dir: os.PathLike | str) -> dict:
    """Read and sanity-check a shard set's manifest.json."""
    path = pathlib.Path(set_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{path}: field 'manifest.json' is missing: {set_dir} is not a finished shard set")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise ShardError(f"{path}: expected a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise ShardError(f"{path}: field 'format' is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{path}: field 'format_version' is {manifest.get('format_version')!r}, "
                         f"this reader reads version {FORMAT_VERSION}")
    for key in ("feature_dim", "dtype", "files", "records"):
        if key not in manifest:
            raise ShardError(f"{path}: field {key!r} is missing")
    if manifest["dtype"] not in DTYPES:
        raise ShardError(f"{path}: field 'dtype' is {manifest['dtype']!r}, expected one of {DTYPES}")
    per_file = collections.Counter()
    for e in manifest["records"]:
        per_file[e["file"]] += e.get("pieces", 1)
    for i, f in enumerate(manifest["files"]):
        if per_file[i] != f["records"]:
            raise ShardError(f"{path}: field 'files[{i}].records' is {f['records']} but the entries that "
                             f"point at {f['name']} span {per_file[i]} records")
    return manifest


def manifest_provenance(manifest: dict) -> dict[str, str]:
    """{"feature_extractor", "protocol"} of a manifest; UNKNOWN for manifests that predate them."""
    return {key: manifest.get(key) or UNKNOWN for key in ("feature_extractor", "protocol")}


def check_provenance(set_dirs: Iterable[os.PathLike | str], root: os.PathLike | str | None = None) -> list[str]:
    """Warnings about shard sets of one dataset whose features were made differently.

    Returns one warning (or none) naming the shard sets of each feature extractor / protocol
    when they are not all the same (UNKNOWN counts as a value of its own: such features cannot
    be shown to match). Raises ShardError, naming each set and its D, when feature dims differ.
    Shard set names are given relative to `root` when it is given.
    """
    dirs = [pathlib.Path(d) for d in set_dirs]
    manifests = [load_manifest(d) for d in dirs]
    name = lambda d: str(d.relative_to(root)) if root is not None and d.is_relative_to(root) else str(d)
    dims = {m["feature_dim"] for m in manifests if m["num_records"]}
    if len(dims) > 1:
        listing = ", ".join(f"{name(d)}: D={m['feature_dim']}" for d, m in zip(dirs, manifests) if m["num_records"])
        raise ShardError(f"{root or 'dataset'}: shard sets disagree on field 'feature_dim' ({listing}); "
                         "features of different networks cannot be trained on together")
    groups: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for d, m in zip(dirs, manifests):
        p = manifest_provenance(m)
        groups[(p["feature_extractor"], p["protocol"])].append(name(d))
    if len(groups) <= 1:
        return []
    listing = "; ".join(f"feature_extractor {e!r}, protocol {p!r}: {', '.join(sets)}"
                        for (e, p), sets in sorted(groups.items()))
    return [f"{root or 'dataset'}: the shard sets mix feature extractors or protocols ({listing}); a detector "
            "can learn the difference instead of the anomaly (docs/features.md)"]


class ShardSet:
    """Read side: every record of one shard set, or of all shard sets below a folder.

    A grain RandomAccessDataSource (``len`` and ``[i]``) that can be pickled to worker
    processes (readers are opened lazily in each process). `entries` gives per-record
    metadata without reading features; each entry also has `set` (index into `set_dirs`),
    `file` and `position`.
    """

    def __init__(self, path: os.PathLike | str, *, verify: bool = True):
        self.path = pathlib.Path(path)
        self.set_dirs = find_shard_sets(self.path)
        self.manifests = [load_manifest(d) for d in self.set_dirs]
        dims = {m["feature_dim"] for m in self.manifests if m["num_records"]}
        dtypes = {m["dtype"] for m in self.manifests if m["num_records"]}
        if len(dims) > 1 or len(dtypes) > 1:
            summary = ", ".join(f"{d}: D={m['feature_dim']} {m['dtype']}" for d, m in zip(self.set_dirs, self.manifests))
            raise ShardError(f"{self.path}: shard sets disagree on field 'feature_dim'/'dtype' ({summary})")
        self.feature_dim: int | None = dims.pop() if dims else None
        # Per-segment fields every shard set (with records) carries, {name: E}; `set_fields` per set.
        self.set_fields = [dict(m.get("segment_fields") or {}) for m in self.manifests]
        used = [f for f, m in zip(self.set_fields, self.manifests) if m["num_records"]] or [{}]
        self.segment_fields = {k: v for k, v in used[0].items() if all(f.get(k) == v for f in used)}
        self.provenance = [manifest_provenance(m) for m in self.manifests]  # one per set, as set_dirs
        self.dtype = np.dtype(dtypes.pop() if dtypes else self.manifests[0]["dtype"])
        self.entries: list[dict] = []
        self._files: list[tuple[pathlib.Path, int]] = []  # (path, expected records) per global file index
        for s, (d, m) in enumerate(zip(self.set_dirs, self.manifests)):
            offset = len(self._files)
            self._files += [(d / f["name"], f["records"]) for f in m["files"]]
            self.entries += [dict(e, set=s, file=e["file"] + offset) for e in m["records"]]
        # Each video's ordinal within its file, to name it in messages.
        self._ordinal = [0] * len(self.entries)
        for i in range(1, len(self.entries)):
            same = self.entries[i]["file"] == self.entries[i - 1]["file"]
            self._ordinal[i] = self._ordinal[i - 1] + 1 if same else 0
        self._readers: dict[int, ArrayRecordReader] = {}
        self._lock = threading.Lock()
        if verify:
            self.verify()

    def verify(self) -> None:
        """Check every file against its manifest: present, size, sha256 (unless the verification
        stamp says this very file already matched), record count; entry dims."""
        for d, m in zip(self.set_dirs, self.manifests):
            stamp = read_stamp(d)
            verified = {}
            for f in m["files"]:
                path = d / f["name"]
                if not path.is_file():
                    raise ShardError(f"{path}: file listed in {d / MANIFEST} is missing")
                key = file_key(path, f["sha256"])
                if f.get("bytes") is not None and key["bytes"] != f["bytes"]:
                    raise ShardError(f"{path}: field 'bytes' does not match the manifest (truncated or replaced; "
                                     f"{key['bytes']} bytes, manifest says {f['bytes']})")
                if stamp.get(f["name"]) != key:
                    if file_sha256(path) != f["sha256"]:
                        raise ShardError(f"{path}: field 'sha256' does not match the manifest (corrupt or "
                                         f"truncated; {key['bytes']} bytes, manifest says {f.get('bytes')})")
                verified[f["name"]] = key
            if verified:
                write_stamp(d, stamp | verified)
        for i, (path, expected) in enumerate(self._files):
            self._readers.setdefault(i, _open_reader(path, expected))
        for entry in self.entries:
            if not all(isinstance(entry.get(k), int) and entry[k] > 0 for k in ("crops", "T")):
                raise ShardError(f"{self.set_dirs[entry['set']] / MANIFEST}: record {entry.get('id')!r}: fields "
                                 f"'crops'/'T' must be positive ints, got {entry.get('crops')!r}/{entry.get('T')!r}")

    def __len__(self) -> int:
        return len(self.entries)

    def _reader(self, file_index: int) -> ArrayRecordReader:
        """The (lazily opened, cached) reader of one part file."""
        reader = self._readers.get(file_index)
        if reader is None:
            with self._lock:
                reader = self._readers.get(file_index)
                if reader is None:
                    path, expected = self._files[file_index]
                    reader = _open_reader(path, expected)
                    self._readers[file_index] = reader
        return reader

    def _where(self, i: int) -> str:
        """'<file>: record <ordinal in file> (id <id>)' of record i, for messages."""
        return f"{self._files[self.entries[i]['file']][0]}: record {self._ordinal[i]} (id {self.entries[i]['id']!r})"

    def read_bytes(self, i: int) -> bytes:
        """The serialised bytes of record i."""
        entry = self.entries[i]
        try:
            return _read_video(self._reader(entry["file"]), entry)
        except RuntimeError as e:
            raise ShardError(f"{self._where(i)}: field 'bytes' unreadable ({e})") from e

    def __getitem__(self, i) -> VideoRecord:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record index {i} out of range for {len(self)} records in {self.path}")
        entry = self.entries[i]
        where = self._where(i)
        try:
            record = decode_record(self.read_bytes(i))
        except ShardError as e:
            raise ShardError(f"{where}: {e}") from e
        if record.features.shape != (entry["crops"], entry["T"], self.feature_dim) or record.id != entry["id"]:
            raise ShardError(f"{where}: field 'features' has shape {record.features.shape} (id {record.id!r}), "
                             f"manifest says ({entry['crops']}, {entry['T']}, {self.feature_dim})")
        for name, dim in self.set_fields[entry["set"]].items():
            value = record.segment_fields.get(name)
            if value is None or value.shape != (entry["T"], dim):
                raise ShardError(f"{where}: field {name!r} has shape {None if value is None else value.shape}, "
                                 f"manifest says ({entry['T']}, {dim})")
        return record

    def frame_labels(self, i: int) -> np.ndarray | None:
        """Record i's stored frame labels (None where it has none), read without its features:
        the piece holding the header and the last pieces, which hold the labels (the record's
        last num_frames bytes). The full record's lengths are checked when it is read."""
        entry, where = self.entries[i], self._where(i)
        reader, first, pieces = self._reader(entry["file"]), entry["position"], entry.get("pieces", 1)
        try:
            head = reader.read([first])[0]
            header, _ = _decode_header(head)
            if not header.get("has_frame_labels"):
                return None
            frames = int(header["num_frames"])
            last = min(pieces, frames // PIECE_BYTES + 2)  # pieces that can hold the last `frames` bytes
            tail = head if pieces == 1 else b"".join(reader.read(first + pieces - last, first + pieces))
        except (RuntimeError, ShardError, KeyError, ValueError, TypeError) as e:
            raise ShardError(f"{where}: field 'frame_labels' unreadable ({e})") from e
        if len(tail) < frames:
            raise ShardError(f"{where}: field 'frame_labels': {frames} labels promised, the record ends first")
        return np.frombuffer(tail, np.uint8, frames, len(tail) - frames)

    def require_fields(self, names) -> None:
        """ShardError naming the first shard set that lacks one of the per-segment fields `names`."""
        for name in names:
            for d, fields, m in zip(self.set_dirs, self.set_fields, self.manifests):
                if m["num_records"] and name not in fields:
                    raise ShardError(f"{d / MANIFEST}: field 'segment_fields' lacks {name!r} (has {sorted(fields)}); "
                                     f"the detector reads it: write the shards with it (pavad-gen gvvad captions)")

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        """Close all open readers."""
        with self._lock:
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"ShardSet({str(self.path)!r}, {len(self)} records in {len(self.set_dirs)} set(s), "
                f"D={self.feature_dim}, {self.dtype.name})")


def _read_video(reader: ArrayRecordReader, entry: dict) -> bytes:
    """The serialised bytes of one video: its consecutive ArrayRecord records, joined."""
    start, pieces = entry["position"], entry.get("pieces", 1)
    if pieces == 1:
        return reader.read([start])[0]
    return b"".join(reader.read(start, start + pieces))


def _open_reader(path: pathlib.Path, expected_records: int) -> ArrayRecordReader:
    """Open an ArrayRecord file for random access; ShardError if it is unreadable or short."""
    if not path.is_file():
        raise ShardError(f"{path}: file listed in the manifest is missing")
    try:
        reader = ArrayRecordReader(str(path), _READER_OPTIONS)
    except (RuntimeError, ValueError) as e:
        raise ShardError(f"{path}: cannot open as ArrayRecord ({e})") from e
    if not reader.ok() or reader.num_records() != expected_records:
        n = reader.num_records() if reader.ok() else "no readable"
        try:
            reader.close()
        except RuntimeError:  # close() re-raises the error that made the reader not ok()
            pass
        raise ShardError(f"{path}: field 'records': file has {n} records, manifest says {expected_records} "
                         "(truncated or corrupt)")
    return reader


# ----------------------------------------------------------------------------- validation


def file_key(path: pathlib.Path, sha256: str) -> dict:
    """What the verification stamp records of a file: size, modification time, the verified sha256."""
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def read_stamp(set_dir: pathlib.Path) -> dict:
    """{file name: file_key} of the files verified in a shard set ({} when there is no stamp)."""
    try:
        stamp = json.loads((set_dir / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def write_stamp(set_dir: pathlib.Path, stamp: dict) -> None:
    """Record verified files; a read-only dataset is simply verified again next time."""
    try:
        atomic.write_text(set_dir / STAMP, json.dumps(stamp, indent=1, sort_keys=True))
    except OSError:
        pass


def validate(path: os.PathLike | str, progress: Callable[[Iterable], Iterable] | None = None) -> list[str]:
    """Every problem found below `path`, each naming the file, record and field; [] = valid.

    Unlike ShardSet(verify=True), this decodes every record and checks finiteness, shapes and
    metadata against the manifest, and keeps going after the first problem. `progress` wraps
    the iteration over each set's files (e.g. tqdm; this module imports no tqdm).
    """
    try:
        set_dirs = find_shard_sets(path)
    except ShardError as e:
        return [str(e)]
    problems = [f"{folder}: field 'manifest.json' is missing: its {len(list(folder.glob('*.array_record')))} "
                ".array_record files belong to no shard set and are skipped by every reader (an unfinished or "
                "crashed write: rewrite or delete it)" for folder in folders_without_manifest(path)]
    for set_dir in set_dirs:
        problems += _validate_set(set_dir, progress or (lambda files: files))
    return problems


def _validate_set(set_dir: pathlib.Path, progress: Callable[[Iterable], Iterable]) -> list[str]:
    """Problems of one shard set."""
    try:
        manifest = load_manifest(set_dir)
    except ShardError as e:
        return [str(e)]
    problems = []
    feature_dim, dtype = manifest["feature_dim"], manifest["dtype"]
    fields = manifest.get("segment_fields") or {}
    if not isinstance(fields, dict) or not all(isinstance(v, int) and v > 0 for v in fields.values()):
        return [f"{set_dir / MANIFEST}: field 'segment_fields' must map names to positive widths, got {fields!r}"]
    listed = {f["name"] for f in manifest["files"]}
    for stray in sorted(set_dir.glob("*.array_record")):
        if stray.name not in listed:
            problems.append(f"{stray}: file is not listed in {set_dir / MANIFEST}")
    by_file = collections.defaultdict(list)
    for entry in manifest["records"]:
        by_file[entry["file"]].append(entry)
    verified = {}
    for i, f in progress(list(enumerate(manifest["files"]))):
        path = set_dir / f["name"]
        if not path.is_file():
            problems.append(f"{path}: file listed in the manifest is missing")
            continue
        if file_sha256(path) != f["sha256"]:
            problems.append(f"{path}: field 'sha256' does not match the manifest "
                            f"({path.stat().st_size} bytes, manifest says {f.get('bytes')})")
        else:
            verified[f["name"]] = file_key(path, f["sha256"])
        try:
            reader = _open_reader(path, f["records"])
        except ShardError as e:
            problems.append(str(e))
            continue
        try:
            for ordinal, entry in enumerate(by_file[i]):
                problems += _validate_record(reader, f"{path}: record {ordinal} (id {entry['id']!r})", entry,
                                             feature_dim, dtype, fields)
        finally:
            reader.close()
    if manifest.get("num_records") != len(manifest["records"]):
        problems.append(f"{set_dir / MANIFEST}: field 'num_records' is {manifest.get('num_records')}, "
                        f"but it lists {len(manifest['records'])} records")
    write_stamp(set_dir, {name: key for name, key in (read_stamp(set_dir) | verified).items()
                          if name in verified or name in listed})
    return problems


def _validate_record(reader: ArrayRecordReader, where: str, entry: dict, feature_dim: int,
                     dtype: str, expected_fields: dict[str, int] | None = None) -> list[str]:
    """Problems of one record: unreadable bytes, checksum, decode, metadata, features."""
    try:
        data = _read_video(reader, entry)
    except RuntimeError as e:
        return [f"{where}: field 'bytes' unreadable ({e})"]
    if "crc32" in entry and zlib.crc32(data) != entry["crc32"]:
        return [f"{where}: field 'crc32' does not match the manifest (corrupt record)"]
    try:
        record = decode_record(data)
    except ShardError as e:
        return [f"{where}: {e}"]
    problems = _record_problems(record) + _feature_problems(record.features, feature_dim)
    if not problems:
        problems += _segment_field_problems(record, expected_fields)
    if record.features.dtype != np.dtype(dtype):
        problems.append(f"field 'features' has dtype {record.features.dtype}, manifest says {dtype}")
    for key in ("id", "stream", "label", "source", "anomaly_class", "num_frames"):
        if getattr(record, key) != entry.get(key):
            problems.append(f"field {key!r} is {getattr(record, key)!r} in the record, {entry.get(key)!r} in the manifest")
    if record.features.ndim == 3 and record.features.shape[:2] != (entry.get("crops"), entry.get("T")):
        problems.append(f"field 'features' has shape {record.features.shape}, manifest says "
                        f"crops={entry.get('crops')}, T={entry.get('T')}")
    return [f"{where}: {p}" for p in problems]
