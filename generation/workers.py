"""Worker machinery shared by the generation steps: sharding, plans, atomic writes, resuming.

Every step (select, refine, synthesize, extract, quality) processes a list of *items*
(dicts with a unique string ``id``) and writes one or more output files per item. Many
copies of a step may run at once, one per shard (Slurm array task, Kubernetes Indexed Job
pod, or a plain loop over ``--shard-index``), each taking a disjoint slice of the items.

Public API
----------
``add_shard_args(parser)``
    Adds ``--shard-index`` and ``--num-shards`` to an argparse parser.
``resolve_shard(args=None, env=os.environ) -> (index, count)``
    The shard of this process, from the flags, else from the environment:
    ``SLURM_ARRAY_TASK_ID`` (minus ``SLURM_ARRAY_TASK_MIN``) and ``SLURM_ARRAY_TASK_COUNT``;
    Kubernetes ``JOB_COMPLETION_INDEX`` with ``PAVAD_NUM_SHARDS`` (set it to the Job's
    ``completions``); or ``PAVAD_SHARD_INDEX`` with ``PAVAD_NUM_SHARDS``. Default ``(0, 1)``.
``items_for_shard(items, index, count) -> list``
    Round-robin slice ``items[index::count]``: shards differ by at most one item.
``resolve_device(device) -> str``
    The torch device of a step: the one given, else ``cuda`` when a GPU is visible, else ``cpu``.
``read_jsonl(path) -> list[dict]`` / ``write_jsonl(path, rows)``
    Plans are JSON lines, one item per line; writes are atomic.
``plan_file_path(plan_path, value) -> Path``
    Paths inside a plan (``image``) are relative to the plan's folder, so a workdir can move.
``atomic_write_bytes / atomic_write_text / atomic_write_json / atomic_save_npy``
    Write to a temporary file in the same folder, then ``os.replace`` onto the target, so a
    reader (or a rerun) never sees a half-written file.
``atomic_path(path)``
    Context manager yielding a temporary path with the target's suffix, for writers that
    need a file name (mp4 writers, ``np.save``); renamed onto ``path`` on success.
``run_items(items, fn, *, out_dir, done=None, desc="items", errors_path=None) -> RunSummary``
    Calls ``fn(item)`` for each item that is not done yet, with a tqdm progress bar. An item
    is done when ``done(item)`` is true; the default is "``out_dir/<id>.json`` exists", so a
    step must write its ``<id>.json`` metadata *last*. A failing item is appended (id, error,
    traceback) to ``errors_path`` (default ``out_dir/errors.jsonl``, JSON lines) and the
    others go on. Leftover temporary files of unfinished items (from a killed run) are
    removed before the items are redone.

Conventions: item ids are file stems (letters, digits, ``_`` and ``-`` only; no dots, so that
``<id>.*`` globs cannot catch another item). Temporary files are named
``.<target name>.<random>.partial<suffix>`` beside their target.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import re
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

PARTIAL_MARKER = ".partial"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


# --------------------------------------------------------------------------- sharding

def add_shard_args(parser: argparse.ArgumentParser) -> None:
    """Add --shard-index/--num-shards (default: taken from the environment, else 0 of 1)."""
    group = parser.add_argument_group("sharding (one process per shard)")
    group.add_argument(
        "--shard-index", type=int, default=None,
        help="which shard this process runs (0-based). Default: SLURM_ARRAY_TASK_ID, "
             "JOB_COMPLETION_INDEX or PAVAD_SHARD_INDEX from the environment, else 0.")
    group.add_argument(
        "--num-shards", type=int, default=None,
        help="how many shards share the work. Default: SLURM_ARRAY_TASK_COUNT or "
             "PAVAD_NUM_SHARDS from the environment, else 1.")


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    """Read an integer environment variable, naming it in the error if it is not one."""
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _shard_from_env(env: Mapping[str, str]) -> tuple[int | None, int | None]:
    """The (index, count) the scheduler set in the environment, None where absent."""
    slurm_id = _env_int(env, "SLURM_ARRAY_TASK_ID")
    if slurm_id is not None:
        # `--array=1-8` numbers tasks from 1: shift by the array's minimum.
        minimum = _env_int(env, "SLURM_ARRAY_TASK_MIN") or 0
        return slurm_id - minimum, _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    k8s_index = _env_int(env, "JOB_COMPLETION_INDEX")
    if k8s_index is not None:
        return k8s_index, _env_int(env, "PAVAD_NUM_SHARDS")
    return _env_int(env, "PAVAD_SHARD_INDEX"), _env_int(env, "PAVAD_NUM_SHARDS")


def resolve_shard(args: argparse.Namespace | None = None,
                  env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's (shard index, shard count): flags first, then the environment."""
    env = os.environ if env is None else env
    env_index, env_count = _shard_from_env(env)
    index = getattr(args, "shard_index", None)
    count = getattr(args, "num_shards", None)
    index = env_index if index is None else index
    count = env_count if count is None else count
    if index is not None and count is None:
        raise ValueError(
            f"shard index {index} is set but the shard count is not: pass --num-shards or set "
            "SLURM_ARRAY_TASK_COUNT / PAVAD_NUM_SHARDS")
    index, count = (0 if index is None else index), (1 if count is None else count)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count}) (num shards {count})")
    return index, count


def items_for_shard(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """The items of shard `index` of `count`: a round-robin slice, balanced within one item."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in [0, {count})")
    return list(items[index::count])


def resolve_device(device: str | None) -> str:
    """The torch device a step runs on: `device` as given, else "cuda" when a GPU is visible, else "cpu"."""
    if device:
        return device
    import torch  # only the steps that run models call this

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- atomic writes

def _partial_name(path: Path) -> Path:
    """A unique temporary path beside `path` that keeps its suffix (writers pick formats by it)."""
    token = os.urandom(4).hex()
    return path.with_name(f".{path.name}.{token}{PARTIAL_MARKER}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success fsync it and rename it onto `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"writer did not create {tmp} (meant for {path})")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same folder + os.replace)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: Any) -> None:
    """Save a numpy array to `path` (.npy) atomically."""
    import numpy as np  # only the steps that save arrays need numpy here

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(array), allow_pickle=False)


# --------------------------------------------------------------------------- plans

def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file into a list of dicts; errors name the file and line."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write dicts as JSON lines to `path` atomically."""
    text = "".join(json.dumps(dict(row), sort_keys=True) + "\n" for row in rows)
    atomic_write_text(path, text)


def plan_file_path(plan_path: str | os.PathLike, value: str) -> Path:
    """A path stored in a plan (e.g. ``image``): absolute, or relative to the plan's folder."""
    path = Path(value)
    return path if path.is_absolute() else Path(plan_path).parent / path


def check_item_ids(items: Sequence[Mapping[str, Any]], source: str = "items") -> None:
    """Raise if an item lacks an `id`, has one that is not a safe file stem, or repeats one."""
    seen = set()
    for number, item in enumerate(items):
        item_id = item.get("id")
        if not isinstance(item_id, str) or not _ID_PATTERN.match(item_id):
            raise ValueError(
                f"{source}: item {number} has id {item_id!r}; ids must be non-empty and use only "
                "letters, digits, '_' and '-'")
        if item_id in seen:
            raise ValueError(f"{source}: id {item_id!r} appears more than once")
        seen.add(item_id)


# --------------------------------------------------------------------------- running items

@dataclasses.dataclass
class RunSummary:
    """What run_items did: ids processed now, skipped as already done, and failed."""

    processed: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return (f"{len(self.processed)} processed, {len(self.skipped)} already done, "
                f"{len(self.failed)} failed")


def metadata_path(out_dir: str | os.PathLike, item_id: str) -> Path:
    """The `<id>.json` written last for an item: its done-marker."""
    return Path(out_dir) / f"{item_id}.json"


def remove_partials(out_dir: str | os.PathLike, item_id: str) -> int:
    """Delete leftover temporary files of one item (from a killed run); return how many."""
    pattern = os.path.join(glob.escape(str(out_dir)), f".{glob.escape(item_id)}.*{PARTIAL_MARKER}*")
    removed = 0
    for leftover in glob.glob(pattern):
        with contextlib.suppress(FileNotFoundError):  # another worker may clean up too
            os.unlink(leftover)
            removed += 1
    return removed


def append_error(errors_path: str | os.PathLike, item_id: str, error: BaseException) -> None:
    """Append one failure (id, error, traceback, host, time) to a JSON-lines errors file."""
    record = {
        "id": item_id,
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(errors_path).parent.mkdir(parents=True, exist_ok=True)
    # One write() on an O_APPEND descriptor: concurrent workers do not interleave lines.
    fd = os.open(errors_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def run_items(items: Sequence[Mapping[str, Any]], fn: Callable[[Mapping[str, Any]], Any], *,
              out_dir: str | os.PathLike, done: Callable[[Mapping[str, Any]], bool] | None = None,
              desc: str = "items", errors_path: str | os.PathLike | None = None) -> RunSummary:
    """Run `fn(item)` on every item not done yet; record failures and go on (see module doc)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_item_ids(items, source=desc)
    done = done or (lambda item: metadata_path(out_dir, item["id"]).exists())
    errors_path = Path(errors_path) if errors_path else out_dir / "errors.jsonl"
    summary = RunSummary()
    for item in tqdm(items, desc=desc, unit="item", dynamic_ncols=True):
        item_id = item["id"]
        if done(item):
            summary.skipped.append(item_id)
            continue
        remove_partials(out_dir, item_id)
        try:
            fn(item)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # one bad item must not stop the shard
            append_error(errors_path, item_id, error)
            tqdm.write(f"{desc}: item {item_id} failed ({type(error).__name__}: {error}); "
                       f"details in {errors_path}")
            summary.failed.append(item_id)
        else:
            summary.processed.append(item_id)
    return summary
