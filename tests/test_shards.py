"""The feature-shard format: round trip, validation on write, corruption found on read."""
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from pavad_jax import shards
from pavad_jax.shards import ShardError, ShardSet, ShardWriter, VideoRecord


def make_record(i, *, stream="normal", crops=2, t=None, d=8, frame_labels=False, rng=None):
    """A small valid record of `stream` with random non-negative features."""
    rng = rng or np.random.default_rng(i)
    t = t or 3 + i % 5
    label = 1 if stream == "abnormal" else 0
    fl = (rng.random(t * 16) < 0.3).astype(np.uint8) if frame_labels else None
    return VideoRecord(
        id=f"video_{i:03d}",
        features=rng.random((crops, t, d), dtype=np.float32),
        label=label,
        source="pseudo" if stream == "pseudo-normal" else "real",
        stream=stream,
        anomaly_class="Abuse" if label else "normal",
        num_frames=t * 16,
        frame_labels=fl,
    )


def mixed_records(n=11):
    streams = ["normal", "abnormal", "pseudo-normal"]
    return [make_record(i, stream=streams[i % 3], frame_labels=i % 2 == 0) for i in range(n)]


@pytest.fixture
def shard_dir(tmp_path):
    out = tmp_path / "set"
    shards.write_shard_set(out, mixed_records(), dtype="float32", records_per_file=4)
    return out


def test_import_does_not_pull_jax_or_torch():
    code = "import sys, pavad_jax.shards; print('jax' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_preserves_every_field(tmp_path, dtype):
    records = mixed_records()
    manifest = shards.write_shard_set(tmp_path, records, dtype=dtype, records_per_file=4)
    data = ShardSet(tmp_path)
    assert len(data) == len(records) and data.feature_dim == 8 and data.dtype == np.dtype(dtype)
    for want, got in zip(records, (data[i] for i in range(len(data)))):
        assert got.features.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got.features, want.features.astype(dtype))
        for key in ("id", "label", "source", "stream", "anomaly_class", "num_frames"):
            assert getattr(got, key) == getattr(want, key)
        if want.frame_labels is None:
            assert got.frame_labels is None
        else:
            np.testing.assert_array_equal(got.frame_labels, want.frame_labels)
    assert [f["records"] for f in manifest["files"]] == [4, 4, 3]
    assert manifest["counts"]["stream"] == {"abnormal": 4, "normal": 4, "pseudo-normal": 3}
    assert manifest["counts"]["label"] == {"0": 7, "1": 4}
    assert manifest["crops"] == [2]
    assert data.entries[5]["T"] == records[5].features.shape[1]


def test_reader_is_picklable_for_grain_workers(shard_dir):
    data = ShardSet(shard_dir)
    _ = data[0]  # opens a reader, which must not travel with the pickle
    clone = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(clone[7].features, data[7].features)
    assert clone[-1].id == data[len(data) - 1].id
    with pytest.raises(IndexError):
        data[len(data)]


def test_folder_of_shard_sets_is_read_as_one(tmp_path):
    shards.write_shard_set(tmp_path / "worker0", [make_record(i) for i in range(3)])
    shards.write_shard_set(tmp_path / "nested" / "worker1", [make_record(i) for i in range(3, 8)])
    data = ShardSet(tmp_path)
    assert len(data) == 8
    # Sets are read in sorted path order: nested/worker1 before worker0.
    assert [data[i].id for i in range(8)] == [f"video_{i:03d}" for i in [3, 4, 5, 6, 7, 0, 1, 2]]


def test_sets_with_different_feature_dims_refuse_to_mix(tmp_path):
    shards.write_shard_set(tmp_path / "a", [make_record(0, d=8)])
    shards.write_shard_set(tmp_path / "b", [make_record(1, d=16)])
    with pytest.raises(ShardError, match="feature_dim"):
        ShardSet(tmp_path)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(features=np.full((1, 3, 8), np.nan, np.float32)), "features"),
        (dict(features=np.ones((3, 8), np.float32)), "features"),
        (dict(features=np.full((1, 3, 8), 1e6, np.float32)), "features"),  # overflows float16
        (dict(stream="weird"), "stream"),
        (dict(source="synthetic"), "source"),
        (dict(label=1), "label"),  # a normal-stream video cannot be abnormal
        (dict(stream="pseudo-normal"), "source"),  # pseudo-normal must come from the generator
        (dict(anomaly_class="Abuse"), "anomaly_class"),
        (dict(frame_labels=np.zeros(5, np.uint8)), "frame_labels"),
    ],
)
def test_writer_rejects_bad_records_naming_the_field(tmp_path, change, field):
    bad = make_record(0)
    for key, value in change.items():
        setattr(bad, key, value)
    with ShardWriter(tmp_path) as writer:
        with pytest.raises(ShardError, match=f"record 0 .*'{field}'"):
            writer.write(bad)


def test_writer_rejects_a_second_feature_dim_and_duplicate_ids(tmp_path):
    with ShardWriter(tmp_path) as writer:
        writer.write(make_record(0, d=8))
        with pytest.raises(ShardError, match="feature_dim=8"):
            writer.write(make_record(1, d=4))
        with pytest.raises(ShardError, match="duplicate id"):
            writer.write(make_record(0))


def test_crash_mid_write_leaves_no_visible_set(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "set", records_per_file=2) as writer:
            for i in range(5):
                writer.write(make_record(i))
            raise RuntimeError("worker killed")
    assert not (tmp_path / "set" / "manifest.json").exists()
    assert list((tmp_path / "set").iterdir()) == []
    with pytest.raises(ShardError, match="manifest.json"):
        ShardSet(tmp_path / "set")


def test_killed_process_leaves_no_manifest_and_readers_say_why(tmp_path):
    # A hard kill skips __exit__: the finished part files stay, but no manifest marks them valid.
    writer = ShardWriter(tmp_path, records_per_file=2)
    for i in range(5):
        writer.write(make_record(i))
    del writer
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(ShardError, match="no manifest"):
        ShardSet(tmp_path)
    assert any("manifest.json" in p for p in shards.validate(tmp_path))


def test_refuses_to_overwrite_unless_asked(tmp_path):
    shards.write_shard_set(tmp_path, [make_record(i) for i in range(3)])
    with pytest.raises(FileExistsError):
        ShardWriter(tmp_path)
    shards.write_shard_set(tmp_path, [make_record(9)], overwrite=True)
    assert [e["id"] for e in ShardSet(tmp_path).entries] == ["video_009"]


# ------------------------------------------------------------------ corruption found by validate()


def part_file(shard_dir, i=1):
    return shard_dir / f"part-{i:05d}.array_record"


def test_valid_set_has_no_problems(shard_dir):
    assert shards.validate(shard_dir) == []


def test_truncated_shard_is_named(shard_dir):
    path = part_file(shard_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    problems = shards.validate(shard_dir)
    assert problems and all(str(path) in p for p in problems)
    with pytest.raises(ShardError, match="part-00001.*field 'bytes'"):
        ShardSet(shard_dir)


def test_opening_hashes_only_files_changed_since_they_were_verified(shard_dir, monkeypatch):
    ShardSet(shard_dir)  # verifies every file and records the stamp
    stamp = json.loads((shard_dir / shards.STAMP).read_text())
    assert sorted(stamp) == sorted(f["name"] for f in json.loads((shard_dir / "manifest.json").read_text())["files"])
    hashed = []
    real_sha256 = shards.file_sha256
    monkeypatch.setattr(shards, "file_sha256", lambda path: hashed.append(path) or real_sha256(path))
    ShardSet(shard_dir)
    assert hashed == []  # sizes and the stamp checked, no byte read
    path = part_file(shard_dir)
    data = bytearray(path.read_bytes())
    data[300] ^= 0xFF  # same size, new modification time
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="part-00001.*sha256"):
        ShardSet(shard_dir)
    assert hashed == [path]  # only the changed file was hashed again


def test_flipped_byte_names_file_and_record(shard_dir):
    path = part_file(shard_dir)
    data = bytearray(path.read_bytes())
    data[300] ^= 0xFF  # inside the first record's bytes
    path.write_bytes(bytes(data))
    problems = shards.validate(shard_dir)
    assert any(str(path) in p and "record 0 (id 'video_004')" in p for p in problems), problems
    assert any("sha256" in p for p in problems)
    # Without verification the reader still refuses the corrupt record, naming it.
    data_set = ShardSet(shard_dir, verify=False)
    with pytest.raises(ShardError, match="part-00001.*video_004"):
        data_set[4]


def rewrite_part_with(shard_dir, index_in_set, replacement):
    """Rewrite the part file holding record `index_in_set` with `replacement`, fixing checksums.

    This simulates a buggy writer rather than disk corruption: the file is self-consistent
    and only the deep checks can find the problem.
    """
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    entry = manifest["records"][index_in_set]
    f = manifest["files"][entry["file"]]
    old = ShardSet(shard_dir)
    same_file = {i: old.read_bytes(i) for i, e in enumerate(old.entries) if e["file"] == entry["file"]}
    path = shard_dir / f["name"]
    path.unlink()
    writer = shards.ArrayRecordWriter(str(path), shards._WRITER_OPTIONS)
    for i, data in same_file.items():
        if i == index_in_set:
            data = shards.encode_record(replacement, manifest["dtype"])
            entry["crc32"] = shards.zlib.crc32(data)
        for piece in shards.split_pieces(data):  # same sizes: small records are one piece each
            writer.write(piece)
    writer.close()
    f["sha256"] = shards.file_sha256(path)
    (shard_dir / "manifest.json").write_text(json.dumps(manifest))


def test_nan_features_are_named(shard_dir):
    bad = mixed_records()[5]
    bad.features[0, 1, 2] = np.nan
    rewrite_part_with(shard_dir, 5, bad)
    problems = shards.validate(shard_dir)
    assert len(problems) == 1
    assert "part-00001" in problems[0] and "video_005" in problems[0] and "'features'" in problems[0]
    assert "NaN" in problems[0]


def test_record_with_another_dim_is_named(shard_dir):
    bad = mixed_records()[6]
    bad.features = np.ones((2, 4, 9), np.float32)
    rewrite_part_with(shard_dir, 6, bad)
    problems = shards.validate(shard_dir)
    assert any("video_006" in p and "feature_dim=8" in p for p in problems), problems
    with pytest.raises(ShardError, match="video_006.*'features'"):
        ShardSet(shard_dir)[6]


def test_missing_manifest_is_named(shard_dir):
    (shard_dir / "manifest.json").unlink()
    (problem,) = shards.validate(shard_dir)
    assert str(shard_dir) in problem and "manifest.json" in problem


def test_aligned_frame_labels_truncates_or_pads_with_the_last_label():
    record = make_record(0, t=2)
    record.frame_labels = np.array([0] * 20 + [1] * 5, np.uint8)
    record.num_frames = 25
    np.testing.assert_array_equal(shards.aligned_frame_labels(record), [0] * 20 + [1] * 12)
    record.frame_labels = np.array([1] * 40, np.uint8)
    record.num_frames = 40
    np.testing.assert_array_equal(shards.aligned_frame_labels(record), [1] * 32)


def test_concurrent_reads_from_threads_agree(shard_dir):
    """grain reads with several threads from one ShardSet."""
    from concurrent.futures import ThreadPoolExecutor

    data = ShardSet(shard_dir)
    want = {i: data[i].features.copy() for i in range(len(data))}
    order = np.random.default_rng(0).integers(0, len(data), 400)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: (i, data[i].features), order))
    for i, features in got:
        np.testing.assert_array_equal(features, want[i])


def test_frame_labels_are_read_without_the_features(tmp_path, monkeypatch):
    """ShardSet.frame_labels reads the header's piece and the last ones, wherever the labels start."""
    monkeypatch.setattr(shards, "PIECE_BYTES", 1000)  # 16 * T label bytes then span several pieces
    records = [make_record(i, t=t, frame_labels=i != 1) for i, t in enumerate([300, 7, 61, 2])]
    shards.write_shard_set(tmp_path, records, dtype="float32")
    data = ShardSet(tmp_path)
    assert data.entries[0]["pieces"] > 300 * 16 // 1000
    for i, want in enumerate(records):
        got = data.frame_labels(i)
        if want.frame_labels is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want.frame_labels)
            np.testing.assert_array_equal(got, data[i].frame_labels)


def test_large_records_span_several_pieces(tmp_path):
    """Videos above PIECE_BYTES are stored as consecutive ArrayRecord records and read back whole."""
    rng = np.random.default_rng(0)
    records = [make_record(i, t=t, d=512, frame_labels=True) for i, t in enumerate([300, 2, 700, 5])]
    for record in records:
        record.features = rng.random(record.features.shape, dtype=np.float32)
    manifest = shards.write_shard_set(tmp_path, records, records_per_file=3)
    assert [e["pieces"] for e in manifest["records"]] == [3, 1, 6, 1]  # 2*300*512*2 bytes = 2.3 pieces
    assert [e["position"] for e in manifest["records"]] == [0, 3, 4, 0]
    assert [f["records"] for f in manifest["files"]] == [10, 1]
    data = ShardSet(tmp_path)
    for want, i in zip(records, [2, 0, 3, 1]):
        got = data[i]
        np.testing.assert_array_equal(got.features, records[i].features.astype(np.float16))
        np.testing.assert_array_equal(got.frame_labels, records[i].frame_labels)
    assert shards.validate(tmp_path) == []
    # Damage a middle piece of the third video: validate names that video.
    path = tmp_path / "part-00000.array_record"
    blob = bytearray(path.read_bytes())
    blob[1_500_000] ^= 0xFF  # inside the third video (bytes ~0.62 MB to ~2.05 MB)
    path.write_bytes(bytes(blob))
    problems = shards.validate(tmp_path)
    assert any("record 2 (id 'video_002')" in p for p in problems), problems


def test_manifest_records_the_feature_provenance(tmp_path):
    manifest = shards.write_shard_set(tmp_path / "a", mixed_records(3), feature_extractor="i3d-kinetics400",
                                      protocol="urdmu")
    assert (manifest["feature_extractor"], manifest["protocol"]) == ("i3d-kinetics400", "urdmu")
    assert ShardSet(tmp_path / "a").provenance == [{"feature_extractor": "i3d-kinetics400", "protocol": "urdmu"}]
    # A manifest written before the fields existed reads as unknown.
    path = tmp_path / "a" / shards.MANIFEST
    old = json.loads(path.read_text())
    del old["feature_extractor"], old["protocol"]
    path.write_text(json.dumps(old))
    assert shards.manifest_provenance(shards.load_manifest(tmp_path / "a")) == {
        "feature_extractor": "unknown", "protocol": "unknown"}
    assert shards.write_shard_set(tmp_path / "b", mixed_records(2))["protocol"] == "unknown"


def test_check_provenance_warns_naming_the_sets_and_stops_on_other_dims(tmp_path):
    write = lambda name, records, **kw: shards.write_shard_set(tmp_path / name, records, **kw)
    write("train/real", mixed_records(3), feature_extractor="i3d-kinetics400", protocol="urdmu")
    write("train/pseudo", mixed_records(3), feature_extractor="i3d-kinetics400", protocol="urdmu")
    write("test/real", mixed_records(2), feature_extractor="i3d-kinetics400", protocol="urdmu")
    assert shards.check_provenance(shards.find_shard_sets(tmp_path), root=tmp_path) == []
    write("train/pseudo", mixed_records(3), feature_extractor="i3d-kinetics400", protocol="shortside(resize=256,crop=224)",
          overwrite=True)
    warnings = shards.check_provenance(shards.find_shard_sets(tmp_path), root=tmp_path)
    assert len(warnings) == 1  # one warning for the dataset, naming the sets of each protocol
    assert "protocol 'shortside(resize=256,crop=224)': train/pseudo" in warnings[0]
    assert "protocol 'urdmu': test/real, train/real" in warnings[0]
    write("train/other", [make_record(0, d=16)])
    with pytest.raises(ShardError, match=r"disagree on field 'feature_dim'.*train/other: D=16"):
        shards.check_provenance(shards.find_shard_sets(tmp_path), root=tmp_path)
