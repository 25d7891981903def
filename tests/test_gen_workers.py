"""Worker machinery: sharding from flags and schedulers, atomic writes, resuming, failures."""
import argparse
import json

import numpy as np
import pytest

from generation import workers


def _args(index=None, count=None):
    return argparse.Namespace(shard_index=index, num_shards=count)


def test_resolve_shard_prefers_flags_over_environment():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert workers.resolve_shard(_args(1, 2), env) == (1, 2)
    assert workers.resolve_shard(_args(), env) == (3, 4)


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}, (4, 8)),
    ({"JOB_COMPLETION_INDEX": "2", "PAVAD_NUM_SHARDS": "3"}, (2, 3)),
    ({"PAVAD_SHARD_INDEX": "1", "PAVAD_NUM_SHARDS": "2"}, (1, 2)),
])
def test_resolve_shard_reads_scheduler_environment(env, expected):
    assert workers.resolve_shard(_args(), env) == expected


def test_resolve_shard_rejects_bad_values():
    with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX"):
        workers.resolve_shard(_args(), {"JOB_COMPLETION_INDEX": "x"})
    with pytest.raises(ValueError, match="shard count"):
        workers.resolve_shard(_args(), {"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(ValueError, match=r"not in \[0, 2\)"):
        workers.resolve_shard(_args(2, 2), {})


def test_shards_partition_the_items():
    items = list(range(11))
    shards = [workers.items_for_shard(items, i, 3) for i in range(3)]
    assert sorted(sum(shards, [])) == items
    assert {len(s) for s in shards} == {3, 4}


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    workers.atomic_write_json(tmp_path / "a.json", {"x": 1})
    workers.atomic_save_npy(tmp_path / "b.npy", np.arange(3))
    workers.write_jsonl(tmp_path / "plan.jsonl", [{"id": "a"}, {"id": "b", "k": 2}])
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.arange(3))
    assert workers.read_jsonl(tmp_path / "plan.jsonl") == [{"id": "a"}, {"id": "b", "k": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npy", "plan.jsonl"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with workers.atomic_path(target) as tmp:
            assert tmp.suffix == ".mp4" and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "plan.jsonl"
    path.write_text('{"id": "a"}\n{broken\n')
    with pytest.raises(ValueError, match=r"plan.jsonl:2"):
        workers.read_jsonl(path)


def test_run_items_skips_done_records_failures_and_cleans_partials(tmp_path):
    items = [{"id": f"v{i}"} for i in range(4)]
    (tmp_path / ".v1.mp4.dead.partial.mp4").write_bytes(b"left by a killed run")
    workers.atomic_write_json(tmp_path / "v0.json", {"done": True})
    calls = []

    def fn(item):
        calls.append(item["id"])
        if item["id"] == "v2":
            raise ValueError("bad frame")
        workers.atomic_write_json(workers.metadata_path(tmp_path, item["id"]), {})

    summary = workers.run_items(items, fn, out_dir=tmp_path, desc="test")
    assert calls == ["v1", "v2", "v3"]
    assert (summary.processed, summary.skipped, summary.failed) == (["v1", "v3"], ["v0"], ["v2"])
    assert not list(tmp_path.glob("*.partial*"))
    errors = workers.read_jsonl(tmp_path / "errors.jsonl")
    assert errors[0]["id"] == "v2" and "bad frame" in errors[0]["traceback"]
    # A rerun only retries the failed item.
    calls.clear()
    workers.run_items(items, fn, out_dir=tmp_path, desc="test")
    assert calls == ["v2"]


def test_run_items_rejects_unsafe_ids(tmp_path):
    with pytest.raises(ValueError, match="ids must"):
        workers.run_items([{"id": "a.b"}], lambda item: None, out_dir=tmp_path)
    with pytest.raises(ValueError, match="more than once"):
        workers.run_items([{"id": "a"}, {"id": "a"}], lambda item: None, out_dir=tmp_path)
