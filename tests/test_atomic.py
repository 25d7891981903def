"""pavad_jax.atomic: whole files or none, no temporary files left behind."""
import json

import numpy as np
import pytest

from pavad_jax import atomic


def test_writes_replace_the_target_and_leave_nothing_else(tmp_path):
    target = tmp_path / "sub" / "x.json"
    atomic.write_json(target, {"a": 1}, indent=2)
    atomic.write_json(target, {"a": 2}, indent=2)
    assert json.loads(target.read_text()) == {"a": 2} and target.read_text() == '{\n  "a": 2\n}'
    atomic.write_text(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "t.txt", "x.json"]


def test_temporary_name_keeps_the_suffix_so_numpy_writes_the_right_file(tmp_path):
    with atomic.atomic_path(tmp_path / "scores.npz") as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        np.savez(tmp, a=np.arange(3))
    assert list(np.load(tmp_path / "scores.npz")["a"]) == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["scores.npz"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "x.json"
    atomic.write_json(target, {"old": True})
    with pytest.raises(TypeError):
        atomic.write_json(target, {"bad": object()})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
