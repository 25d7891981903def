"""clu metric writers: TensorBoard event files plus a JSON-lines log a script can read.

Importing this module imports clu's TensorBoard writer (and with it TensorFlow, a few seconds),
so the trainer imports it lazily.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only writes event files here

import numpy as np  # noqa: E402
from clu import metric_writers  # noqa: E402


class JsonlWriter(metric_writers.MetricWriter):
    """Appends one JSON object per write_scalars call: {"step": ..., name: value, ...}."""

    def __init__(self, path: pathlib.Path):
        self._file = open(path, "a", buffering=1)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        row = {"step": int(step)} | {k: float(np.asarray(v)) for k, v in scalars.items()}
        self._file.write(json.dumps(row) + "\n")

    def write_hparams(self, hparams: Mapping[str, Any]):
        self._file.write(json.dumps({"hparams": {k: str(v) for k, v in hparams.items()}}) + "\n")

    # Only scalars and hparams go to the JSON log; the rest lives in TensorBoard.
    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def create_writer(workdir: pathlib.Path, is_main: bool) -> metric_writers.MetricWriter:
    """TensorBoard events in workdir/tensorboard and workdir/metrics.jsonl (main process only)."""
    if not is_main:
        return metric_writers.MultiWriter([])
    return metric_writers.MultiWriter([
        metric_writers.SummaryWriter(str(workdir / "tensorboard")),
        JsonlWriter(workdir / "metrics.jsonl"),
    ])
