"""Atomic file writes for every output of the JAX side (standard library only: shards.py uses it).

Each write goes to a temporary file in the target's folder that then replaces the target in one
os.replace, so a reader, or a rerun after a crash or SIGKILL, sees the old file or the new one,
never half of one; a write that fails removes its temporary file.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A temporary path beside `path` to write to; it replaces `path` when the block succeeds.

    The temporary name ends in the target's suffix, so writers that infer the format from the
    name (np.savez, matplotlib's savefig) write the right one.
    """
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp" + target.suffix)
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> None:
    """json.dumps(obj, **dump_kwargs) written to `path` atomically."""
    write_text(path, json.dumps(obj, **dump_kwargs))
