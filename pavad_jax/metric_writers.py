"""Metrics of a run: TensorBoard event files (tensorboard's own writer, no TensorFlow) and metrics.jsonl.

One schema for pavad-train, pavad-sweep and pavad-occ: every row of metrics.jsonl is
{"step": s, "<group>/<name>": value, ...} with groups such as train/ and eval/; in a sweep each
member's keys are prefixed by member/<index>/ (member_key). The same keys are TensorBoard tags.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Mapping

import numpy as np

JSONL = "metrics.jsonl"
TENSORBOARD = "tensorboard"


def member_key(member: int | None, key: str) -> str:
    """`key` of one sweep member (member/<i>/key); unchanged for a single run (member None)."""
    return key if member is None else f"member/{member}/{key}"


class MetricsLog:
    """Appends rows to WORKDIR/metrics.jsonl and TensorBoard scalars to WORKDIR/tensorboard/.

    Only the main process writes; elsewhere every call is a no-op.
    """

    def __init__(self, workdir: pathlib.Path, enabled: bool = True, *, tensorboard: bool = True):
        self.enabled = enabled
        self._file = self._board = None
        if not enabled:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        self._file = open(workdir / JSONL, "a", buffering=1)
        if tensorboard:
            # tensorboard's event writer and protos need neither TensorFlow nor torch.
            from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=import-outside-toplevel

            self._board = EventFileWriter(str(workdir / TENSORBOARD), flush_secs=30)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """One row: every scalar at `step` (non-finite values are written as null)."""
        if not self.enabled or not scalars:
            return
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        row = {"step": int(step)} | {k: (v if math.isfinite(v) else None) for k, v in values.items()}
        self._file.write(json.dumps(row) + "\n")
        if self._board is not None:
            from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel

            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)
                                                 for k, v in values.items()])
            self._board.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        if self._board is not None:
            self._board.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._board is not None:
            self._board.close()
            self._board = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_rows(path: pathlib.Path) -> list[dict]:
    """Every row of a metrics.jsonl."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
