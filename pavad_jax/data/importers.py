"""Import public I3D feature releases into shard sets.

One function per on-disk layout yields `VideoRecord`s (`urdmu_records`, `rtfm_records`,
`folder_records`); `import_*` writes them to a shard set. Frame labels of test videos come
from a `gt` source (see `FrameLabelSource`) and are stored already aligned to the features:
``num_frames == T * 16`` and ``frame_labels`` of that length (truncated when the ground truth
is longer, padded with its last label when shorter), so evaluation concatenates them as they
are. Training videos carry no frame labels and ``num_frames == T * 16``.

Layouts (see docs/data.md):
- UR-DMU: one ``<name>__<k>.npy`` of shape (T, D) per crop k; a .list with one line per crop
  file, abnormal videos first (UCF_Train.list, UCF_Test.list, XD_Train.list, XD_Test.list).
- RTFM: one ``<name>_i3d.npy`` of shape (T, crops, D) per video; a .list with one line per
  video, abnormal first (shanghai-i3d-*-10crop.list, ucf-i3d*.list).
- folder: ``.npy`` files of shape (T, D) or (crops, T, D) and a CSV of labels.
"""
from __future__ import annotations

import csv
import os
import pathlib
import re
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from pavad_jax import ground_truth
from pavad_jax.shards import SEGMENT_FRAMES, VideoRecord, write_shard_set

DATASETS = ("ucf", "xd", "sht")
# XD-Violence label codes (the `_label_B2-0-0` part of a video name).
XD_CLASSES = {"A": "normal", "B1": "Fighting", "B2": "Shooting", "B4": "Riot", "B5": "Abuse",
              "B6": "Car accident", "G": "Explosion"}
UNKNOWN_CLASS = "unknown"  # abnormal video whose class the release does not give
# Abnormal-first lists whose names carry no label: how many abnormal videos lead (README).
KNOWN_NUM_ABNORMAL = {"shanghai-i3d-train-10crop.list": 63, "shanghai-i3d-test-10crop.list": 44}
_CROP_FILE = re.compile(r"^(?P<name>.+)__(?P<crop>\d+)\.npy$")
_UCF_CLASS = re.compile(r"^(?P<cls>[A-Za-z]+?)\d+_x264$")


class ImporterError(ValueError):
    """Bad importer input; the message names the file and the field or line."""


# ----------------------------------------------------------------------------- names and labels


def read_list(path: os.PathLike | str) -> list[str]:
    """Non-empty, stripped lines of a .list / .txt file."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def basename(line: str) -> str:
    """The file name of a list entry, whichever OS wrote its path (`G:\\x\\a.npy`, `/x/a.npy`)."""
    return re.split(r"[\\/]", line)[-1]


def video_label(name: str, dataset: str) -> int:
    """Video label from the name: UCF 'Normal' in name, XD '_label_A' = normal."""
    if dataset == "ucf":
        return 0 if "Normal" in name else 1
    if dataset == "xd":
        return 0 if "_label_A" in name else 1
    raise ValueError(f"the video label of {dataset!r} videos is not in their names; pass num_abnormal")


def anomaly_class(name: str, dataset: str, label: int, sht_classes: dict[str, str] | None = None) -> str:
    """Anomaly class of a video ('normal' for normal ones), from its name or the SHT relabel list."""
    if label == 0:
        return "normal"
    if dataset == "ucf":
        match = _UCF_CLASS.match(name)
        return match["cls"] if match else UNKNOWN_CLASS
    if dataset == "xd":
        codes = name.rsplit("_label_", 1)[-1].split("-")
        classes = [XD_CLASSES.get(c, c) for c in codes if c not in ("0", "A")]
        return ",".join(dict.fromkeys(classes)) or UNKNOWN_CLASS
    return (sht_classes or {}).get(name, UNKNOWN_CLASS)


def read_sht_classes(relabel_list: os.PathLike | str) -> dict[str, str]:
    """SHT relabel.list: `<video> <class>[,<class>...]` per line -> {video: classes}."""
    classes = {}
    for n, line in enumerate(read_list(relabel_list), 1):
        parts = line.split()
        if len(parts) != 2:
            raise ImporterError(f"{relabel_list}: line {n}: expected '<video> <class>', got {line!r}")
        classes[parts[0]] = parts[1]
    return classes


# ----------------------------------------------------------------------------- frame labels


class FrameLabelSource:
    """Frame-level ground truth of test videos, from `path`: a 1-D ``.npy`` of all test videos'
    labels concatenated in list order (gt-ucf.npy, gt-sh.npy, xd_gt.npy: each video consumes
    T*16 labels, and the whole array must be used), or any form pavad_jax/ground_truth.py reads
    (per-video ``.npy`` folders, a dict ``.pickle``, UCF / XD temporal annotations ``.txt``, JSON).
    A video absent from the ground truth is all-normal if it is normal, an error if abnormal.
    """

    def __init__(self, path: os.PathLike | str, segment_frames: int = SEGMENT_FRAMES):
        self.path = pathlib.Path(path)
        self.segment_frames = segment_frames
        self._offset = 0
        self._concatenated = None
        self._truths: dict[str, ground_truth.VideoTruth] = {}
        try:
            if self.path.suffix == ".npy" and self.path.is_file():
                self._concatenated = np.load(self.path)
                if self._concatenated.ndim != 1:
                    raise ImporterError(f"{self.path}: concatenated ground truth must be 1-D, has shape "
                                        f"{self._concatenated.shape}")
            else:
                self._truths = ground_truth.read_ground_truth(self.path)
        except ground_truth.GroundTruthError as e:
            raise ImporterError(str(e)) from None

    def labels(self, name: str, num_segments: int, label: int) -> np.ndarray:
        """uint8 labels of `name`, aligned to num_segments*segment_frames frames."""
        length = num_segments * self.segment_frames
        if self._concatenated is not None:
            raw = self._concatenated[self._offset : self._offset + length]
            if raw.shape[0] < length:
                raise ImporterError(f"{self.path}: ran out of labels at video {name!r} (needs {length} from offset "
                                    f"{self._offset}, {self._concatenated.shape[0]} in all): list order or T differ")
            if not np.isin(raw, (0, 1)).all():
                raise ImporterError(f"{self.path}: labels of video {name!r} must be 0/1, got {np.unique(raw)[:5]}")
            self._offset += length
            return raw.astype(np.uint8)
        try:
            truth = ground_truth.find(self._truths, name, self.path)
        except ground_truth.GroundTruthError as e:
            raise ImporterError(str(e)) from None
        if truth is None:
            if label == 1:
                raise ImporterError(f"{self.path}: no frame labels for abnormal video {name!r}")
            return np.zeros(length, np.uint8)
        return truth.frame_labels(length)

    def finish(self) -> None:
        """Check that a concatenated ground truth was consumed exactly."""
        if self._concatenated is not None and self._offset != self._concatenated.shape[0]:
            raise ImporterError(f"{self.path}: the videos consumed {self._offset} of {self._concatenated.shape[0]} "
                                "labels: list order, video subset or T differ from this ground truth")


# ----------------------------------------------------------------------------- feature files


def index_features(root: os.PathLike | str) -> dict[str, pathlib.Path]:
    """Every .npy below `root` by file name; the lists' own directory prefixes are ignored."""
    index: dict[str, pathlib.Path] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".npy"):
                if f in index:
                    raise ImporterError(f"{root}: file name {f!r} appears twice ({index[f]} and {dirpath}/{f}); "
                                        "point --features at one split")
                index[f] = pathlib.Path(dirpath, f)
    if not index:
        raise ImporterError(f"{root}: no .npy feature files found")
    return index


def _load(index: dict[str, pathlib.Path], file_name: str, list_file, line_no: int) -> np.ndarray:
    """Load one listed feature file, naming the list line when it is missing."""
    if file_name not in index:
        raise ImporterError(f"{list_file}: line {line_no}: feature file {file_name!r} not found under the feature root")
    return np.load(index[file_name])


def _records(videos: list[tuple[str, Callable[[], np.ndarray]]], labels: list[int], *, dataset: str,
             gt: FrameLabelSource | None, source: str, sht_classes=None, desc: str) -> Iterator[VideoRecord]:
    """Turn (name, feature loader) pairs plus labels into validated VideoRecords."""
    for (name, load), label in tqdm(list(zip(videos, labels)), desc=desc, unit="video"):
        features = load()
        t = features.shape[1]
        frame_labels = gt.labels(name, t, label) if gt is not None else None
        yield VideoRecord(
            id=name,
            features=features,
            label=label,
            source=source,
            stream="abnormal" if label else "normal",
            anomaly_class=anomaly_class(name, dataset, label, sht_classes),
            num_frames=t * SEGMENT_FRAMES,
            frame_labels=frame_labels,
        )
    if gt is not None:
        gt.finish()


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset is {dataset!r}, expected one of {DATASETS}")


def _labels_for(names: list[str], dataset: str, num_abnormal: int | None, list_file) -> list[int]:
    """Per-video labels: the first num_abnormal are abnormal, else from the names."""
    if num_abnormal is None and dataset == "sht":
        num_abnormal = KNOWN_NUM_ABNORMAL.get(pathlib.Path(list_file).name)
        if num_abnormal is None:
            raise ImporterError(f"{list_file}: SHT names carry no label; pass num_abnormal (abnormal videos come first)")
    if num_abnormal is None:
        return [video_label(n, dataset) for n in names]
    if not 0 <= num_abnormal <= len(names):
        raise ImporterError(f"{list_file}: num_abnormal={num_abnormal} but the list has {len(names)} videos")
    return [1] * num_abnormal + [0] * (len(names) - num_abnormal)


# ----------------------------------------------------------------------------- layouts


def urdmu_videos(list_file) -> dict[str, list[tuple[int, str, int]]]:
    """UR-DMU list -> {video name: [(crop k, file name, list line), ...]} in list order."""
    crops: dict[str, list[tuple[int, str, int]]] = {}
    for n, line in enumerate(read_list(list_file), 1):
        match = _CROP_FILE.match(basename(line))
        if not match:
            raise ImporterError(f"{list_file}: line {n}: {line!r} is not a `<name>__<crop>.npy` crop file")
        crops.setdefault(match["name"], []).append((int(match["crop"]), basename(line), n))
    return crops


def urdmu_records(list_file, feature_root, *, dataset: str, gt=None, num_abnormal: int | None = None,
                  sht_classes=None, source: str = "real") -> Iterator[VideoRecord]:
    """Records of a UR-DMU layout: per-crop (T, D) files `<name>__<k>.npy`, one list line each."""
    _check_dataset(dataset)
    crops = urdmu_videos(list_file)
    index = index_features(feature_root)

    def loader(name):
        def load():
            parts = [_load(index, f, list_file, n) for _, f, n in sorted(crops[name])]
            shapes = {p.shape for p in parts}
            if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                raise ImporterError(f"{list_file}: crops of video {name!r} must all be (T, D) arrays of one shape, "
                                    f"got {sorted(shapes)}")
            return np.stack(parts)
        return load

    names = list(crops)
    labels = _labels_for(names, dataset, num_abnormal, list_file)
    gt = FrameLabelSource(gt) if gt is not None else None
    yield from _records([(n, loader(n)) for n in names], labels, dataset=dataset, gt=gt, source=source,
                        sht_classes=sht_classes, desc=f"import {pathlib.Path(list_file).name}")


def rtfm_records(list_file, feature_root, *, dataset: str, gt=None, num_abnormal: int | None = None,
                 sht_classes=None, source: str = "real") -> Iterator[VideoRecord]:
    """Records of an RTFM layout: one (T, crops, D) file `<name>_i3d.npy` per video."""
    _check_dataset(dataset)
    files = [basename(line) for line in read_list(list_file)]
    names = [re.sub(r"(_i3d)?\.npy$", "", f) for f in files]
    labels = _labels_for(names, dataset, num_abnormal, list_file)
    index = index_features(feature_root)

    def loader(file_name, line_no):
        def load():
            features = _load(index, file_name, list_file, line_no)
            if features.ndim != 3:
                raise ImporterError(f"{index[file_name]}: expected (T, crops, D), got shape {features.shape}")
            return np.ascontiguousarray(features.transpose(1, 0, 2))
        return load

    videos = [(name, loader(f, n)) for n, (name, f) in enumerate(zip(names, files), 1)]
    gt = FrameLabelSource(gt) if gt is not None else None
    yield from _records(videos, labels, dataset=dataset, gt=gt, source=source, sht_classes=sht_classes,
                        desc=f"import {pathlib.Path(list_file).name}")


def folder_records(folder, labels_csv, *, gt=None, source: str = "real") -> Iterator[VideoRecord]:
    """Records of a plain folder of (T, D) or (crops, T, D) .npy files and a CSV of labels.

    CSV columns: `id` or `file` (relative to `folder`, `.npy` optional), `label` (0/1), and
    optionally `class`, `stream`, `source` (defaults: class 'normal' or 'unknown', stream from the
    label, `source` argument). Videos are written in CSV order.
    """
    folder = pathlib.Path(folder)
    gt = FrameLabelSource(gt) if gt is not None else None
    rows = _read_label_csv(labels_csv)
    for n, row in tqdm(rows, desc=f"import {folder.name}", unit="video"):
        where = f"{labels_csv}: line {n}"
        ref = row.get("file") or row.get("id")
        path = folder / ref if (folder / ref).is_file() else folder / f"{ref}.npy"
        if not path.is_file():
            raise ImporterError(f"{where}: field 'file'/'id': no feature file {path}")
        features = np.load(path)
        if features.ndim == 2:
            features = features[None]
        if features.ndim != 3:
            raise ImporterError(f"{path}: expected (T, D) or (crops, T, D), got shape {features.shape}")
        try:
            label = int(row["label"])
        except (KeyError, ValueError) as e:
            raise ImporterError(f"{where}: field 'label' must be 0 or 1, got {row.get('label')!r}") from e
        video_id = row.get("id") or pathlib.Path(ref).stem
        stream = row.get("stream") or ("abnormal" if label else "normal")
        t = features.shape[1]
        yield VideoRecord(
            id=video_id,
            features=features,
            label=label,
            source=row.get("source") or source,
            stream=stream,
            anomaly_class=row.get("class") or ("normal" if label == 0 else UNKNOWN_CLASS),
            num_frames=t * SEGMENT_FRAMES,
            frame_labels=gt.labels(video_id, t, label) if gt is not None else None,
        )
    if gt is not None:
        gt.finish()


def _read_label_csv(path) -> list[tuple[int, dict]]:
    """Rows of a labels CSV with their line numbers; checks the required columns."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        if "label" not in columns or not columns & {"id", "file"}:
            raise ImporterError(f"{path}: needs columns 'label' and 'id' or 'file', has {sorted(columns)}")
        return [(n, {k: (v or "").strip() for k, v in row.items()}) for n, row in enumerate(reader, 2)]


# ----------------------------------------------------------------------------- writing


def import_records(records: Iterable[VideoRecord], out_dir, *, dtype: str = "float16",
                   records_per_file: int = 64, overwrite: bool = False, feature_extractor: str | None = None,
                   protocol: str | None = None) -> dict:
    """Write imported records to a shard set, naming the video when one is rejected.

    `feature_extractor` and `protocol` say how the release was made (docs/features.md: the
    UCF-Crime 10-crop release is "i3d-kinetics400" / "urdmu"); the manifest records them, and
    "unknown" when they are not given.
    """
    return write_shard_set(out_dir, records, dtype=dtype, records_per_file=records_per_file, overwrite=overwrite,
                           feature_extractor=feature_extractor, protocol=protocol)


def import_urdmu(list_file, feature_root, out_dir, *, dataset: str, gt=None, num_abnormal=None,
                 sht_classes=None, source="real", **write_kw) -> dict:
    """UR-DMU layout -> shard set in `out_dir`; returns the manifest."""
    records = urdmu_records(list_file, feature_root, dataset=dataset, gt=gt, num_abnormal=num_abnormal,
                            sht_classes=sht_classes, source=source)
    return import_records(records, out_dir, **write_kw)


def import_rtfm(list_file, feature_root, out_dir, *, dataset: str, gt=None, num_abnormal=None,
                sht_classes=None, source="real", **write_kw) -> dict:
    """RTFM layout -> shard set in `out_dir`; returns the manifest."""
    records = rtfm_records(list_file, feature_root, dataset=dataset, gt=gt, num_abnormal=num_abnormal,
                           sht_classes=sht_classes, source=source)
    return import_records(records, out_dir, **write_kw)


def import_folder(folder, labels_csv, out_dir, *, gt=None, source="real", **write_kw) -> dict:
    """Plain folder + labels CSV -> shard set in `out_dir`; returns the manifest."""
    return import_records(folder_records(folder, labels_csv, gt=gt, source=source), out_dir, **write_kw)
