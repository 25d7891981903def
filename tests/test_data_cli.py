"""pavad-data: inspect, validate (one test per kind of damage), import and synthetic."""
import json
import subprocess
import sys

import numpy as np
import pytest

from pavad_jax import shards
from pavad_jax.data import cli, importers, synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The small synthetic benchmark, built once through the CLI."""
    out = tmp_path_factory.mktemp("data") / "syn"
    assert cli.main(["synthetic", "--output", str(out), "--size", "small", "--seed", "0"]) == 0
    return out


@pytest.fixture
def damaged(tmp_path):
    """A fresh copy of a small shard set that a test may damage."""
    records = [
        shards.VideoRecord(f"v{i}", np.random.default_rng(i).random((2, 4 + i, 8), dtype=np.float32),
                           i % 2, "real", ("normal", "abnormal")[i % 2], ("normal", "Fighting")[i % 2], (4 + i) * 16)
        for i in range(6)
    ]
    shards.write_shard_set(tmp_path / "set", records, records_per_file=3)
    return tmp_path / "set"


def test_help_explains_every_command():
    out = subprocess.run([sys.executable, "-m", "pavad_jax.data.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("inspect", "validate", "import", "synthetic"):
        assert command in out
    out = subprocess.run([sys.executable, "-m", "pavad_jax.data.cli", "import", "urdmu", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--gt" in out and "--num-abnormal" in out


def test_synthetic_twice_keeps_the_valid_copy(dataset, capsys):
    stamp = (dataset / synthetic.INFO_FILE).stat().st_mtime_ns
    assert cli.main(["synthetic", "--output", str(dataset), "--size", "small", "--seed", "0"]) == 0
    assert "already valid" in capsys.readouterr().out
    assert (dataset / synthetic.INFO_FILE).stat().st_mtime_ns == stamp


def test_inspect_json_matches_the_data(dataset, capsys):
    assert cli.main(["inspect", str(dataset), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"train", "test"}
    spec = synthetic.SIZES["small"]
    train = report["train"]
    assert train["records"] == spec.train_normal + spec.train_pseudo_abnormal + spec.train_pseudo_normal + \
        spec.train_real_abnormal
    assert train["source_stream"]["pseudo/pseudo-normal"] == spec.train_pseudo_normal
    assert train["feature_dim"] == spec.feature_dim and train["crops"] == [spec.crops]
    data = shards.ShardSet(dataset / "train")
    ts = [e["T"] for e in data.entries]
    assert train["T"]["min"] == min(ts) and train["T"]["max"] == max(ts)
    assert sum(b["count"] for b in train["T"]["histogram"]) == len(ts)
    normal = [data[i].features.astype(np.float32) for i, e in enumerate(data.entries) if e["stream"] == "normal"]
    want = np.concatenate([np.linalg.norm(f, axis=-1).ravel() for f in normal]).mean()
    assert train["mean_segment_norm"]["real/normal"] == pytest.approx(want, rel=1e-6)
    assert train["mean_segment_norm"]["pseudo/abnormal"] == pytest.approx(synthetic.PSEUDO_ANOMALY_NORM, rel=5e-3)
    assert report["test"]["with_frame_labels"] == report["test"]["records"]


def test_inspect_table_is_readable(dataset, capsys):
    assert cli.main(["inspect", str(dataset / "test")]) == 0
    out = capsys.readouterr().out
    assert "real/abnormal" in out and "T (segments): min" in out and "mean segment L2 norm" in out


def test_validate_accepts_a_good_dataset(dataset, capsys):
    assert cli.main(["validate", str(dataset)]) == 0
    assert "OK: 100 records in 2 shard set(s)" in capsys.readouterr().out


def run_validate(path, capsys):
    code = cli.main(["validate", str(path)])
    return code, capsys.readouterr().out


def test_validate_truncated_shard(damaged, capsys):
    path = damaged / "part-00001.array_record"
    path.write_bytes(path.read_bytes()[:1000])
    code, out = run_validate(damaged, capsys)
    assert code == 1 and "part-00001.array_record" in out and "part-00000" not in out


def test_validate_flipped_byte(damaged, capsys):
    path = damaged / "part-00000.array_record"
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))
    code, out = run_validate(damaged, capsys)
    assert code == 1 and "part-00000.array_record: record 0 (id 'v0')" in out


def test_validate_nan_features_and_other_dim(damaged, capsys):
    """A buggy writer: records re-encoded with NaN / another D, checksums updated to match."""
    manifest = json.loads((damaged / "manifest.json").read_text())
    data = shards.ShardSet(damaged)
    nan_record, wide_record = data[3], data[4]
    nan_record.features = nan_record.features.copy()
    nan_record.features[1, 2, 3] = np.nan
    wide_record.features = np.ones((2, wide_record.features.shape[1], 9), np.float32)
    blobs = [data.read_bytes(5)]
    blobs[0:0] = [shards.encode_record(nan_record), shards.encode_record(wide_record)]
    path = damaged / "part-00001.array_record"
    path.unlink()
    writer = shards.ArrayRecordWriter(str(path), shards._WRITER_OPTIONS)
    for blob in blobs:
        for piece in shards.split_pieces(blob):
            writer.write(piece)
    writer.close()
    manifest["files"][1]["sha256"] = shards.file_sha256(path)
    for entry, blob in zip(manifest["records"][3:], blobs):
        entry["crc32"] = shards.zlib.crc32(blob)
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    code, out = run_validate(damaged, capsys)
    assert code == 1
    lines = out.strip().splitlines()
    assert any("record 0 (id 'v3')" in l and "'features'" in l and "NaN" in l for l in lines), out
    assert any("record 1 (id 'v4')" in l and "D=9" in l and "feature_dim=8" in l for l in lines), out
    assert not any("'v5'" in l for l in lines)


def test_validate_missing_manifest(damaged, capsys):
    (damaged / "manifest.json").unlink()
    code, out = run_validate(damaged, capsys)
    assert code == 1 and "manifest.json" in out and str(damaged) in out


def test_validate_dataset_names_the_split_that_lost_its_manifest(dataset, tmp_path, capsys):
    import shutil

    copy = tmp_path / "syn"
    shutil.copytree(dataset, copy)
    (copy / "train" / "manifest.json").unlink()
    code, out = run_validate(copy, capsys)
    assert code == 1
    assert f"{copy / 'train'}: field 'manifest.json' is missing" in out, out
    assert str(copy / "test") not in out  # the intact split has no problem


def test_validate_names_a_shard_set_without_manifest_beside_good_ones(damaged, tmp_path, capsys):
    # Two workers' shard sets of one split; the second one's manifest is gone.
    split = tmp_path / "train"
    for part in ("part-00000-of-00002", "part-00001-of-00002"):
        shards.write_shard_set(split / part, [shards.ShardSet(damaged)[0]])
    (split / "part-00001-of-00002" / "manifest.json").unlink()
    assert shards.find_shard_sets(split) == [split / "part-00000-of-00002"]  # a reader silently skips it
    code, out = run_validate(split, capsys)
    assert code == 1
    (line,) = out.strip().splitlines()
    assert line.startswith(f"{split / 'part-00001-of-00002'}: field 'manifest.json' is missing: its 1 .array_record")


def test_import_folder_then_inspect(tmp_path, capsys):
    (tmp_path / "f").mkdir()
    for i in range(3):
        np.save(tmp_path / "f" / f"clip{i}.npy", np.full((4 + i, 8), 0.5, np.float32))
    (tmp_path / "labels.csv").write_text("id,label,class,source,stream\nclip0,0,,real,normal\n"
                                         "clip1,1,Arson,pseudo,abnormal\nclip2,0,,pseudo,pseudo-normal\n")
    code = cli.main(["import", "folder", "--features", str(tmp_path / "f"), "--labels", str(tmp_path / "labels.csv"),
                     "--output", str(tmp_path / "out"), "--feature-extractor", "i3d-kinetics400",
                     "--protocol", "urdmu"])
    assert code == 0 and "wrote 3 videos" in capsys.readouterr().out
    manifest = shards.load_manifest(tmp_path / "out")
    assert (manifest["feature_extractor"], manifest["protocol"]) == ("i3d-kinetics400", "urdmu")
    assert cli.main(["inspect", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["out"]
    assert report["source_stream"] == {"pseudo/abnormal": 1, "pseudo/pseudo-normal": 1, "real/normal": 1}
    assert report["mean_segment_norm"]["real/normal"] == pytest.approx(0.5 * np.sqrt(8), rel=1e-3)


def test_import_rtfm_sht_test_via_cli(annotations_dir, tmp_path, capsys):
    sht = annotations_dir / "sht"
    lengths = dict((n, int(t)) for n, t in (l.split() for l in importers.read_list(sht / "test_abnormal_num_segments_rtfm.txt")))
    (tmp_path / "f").mkdir()
    for line in importers.read_list(sht / "shanghai-i3d-test-10crop.list"):
        name = importers.basename(line)
        np.save(tmp_path / "f" / name, np.ones((lengths.get(name.removesuffix("_i3d.npy"), 20), 2, 4), np.float32))
    code = cli.main(["import", "rtfm", "--list", str(sht / "shanghai-i3d-test-10crop.list"), "--dataset", "sht",
                     "--features", str(tmp_path / "f"), "--gt", str(sht / "test_frame_mask"),
                     "--output", str(tmp_path / "out")])
    assert code == 0 and "abnormal 44, normal 155" in capsys.readouterr().out
    assert cli.main(["validate", str(tmp_path / "out")]) == 0


def test_inspect_a_folder_of_shard_sets(damaged, tmp_path, capsys):
    """e.g. one shard set per generation worker below train/pseudo/."""
    shards.write_shard_set(tmp_path / "worker1", [shards.VideoRecord(
        "w1", np.ones((2, 3, 8), np.float32), 1, "pseudo", "abnormal", "Arson", 48)])
    assert cli.main(["inspect", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[tmp_path.name]
    assert report["shard_sets"] == 2 and report["records"] == 7
    assert report["source_stream"]["pseudo/abnormal"] == 1


def test_import_error_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "f").mkdir()
    (tmp_path / "labels.csv").write_text("name,label\nx,0\n")
    code = cli.main(["import", "folder", "--features", str(tmp_path / "f"), "--labels", str(tmp_path / "labels.csv"),
                     "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "labels.csv" in err and "'id' or 'file'" in err


def test_inspect_warns_once_when_a_dataset_mixes_protocols(tmp_path, capsys):
    records = lambda k: [shards.VideoRecord(f"v{k}{i}", np.ones((1, 2, 8), np.float32), 0, "real", "normal", "normal", 32)
                         for i in range(2)]
    shards.write_shard_set(tmp_path / "train" / "real", records(0), feature_extractor="i3d-kinetics400",
                           protocol="urdmu")
    shards.write_shard_set(tmp_path / "train" / "pseudo", records(1), feature_extractor="i3d-kinetics400",
                           protocol="shortside(resize=256,crop=224)")
    shards.write_shard_set(tmp_path / "test" / "real", records(2), feature_extractor="i3d-kinetics400",
                           protocol="urdmu")
    assert cli.main(["inspect", str(tmp_path), "--no-norms"]) == 0
    out, err = capsys.readouterr()
    assert err.count("warning") == 1 and "train/pseudo" in err and "test/real, train/real" in err
    assert "i3d-kinetics400 / urdmu" in out  # each split's table names its provenance
    shards.write_shard_set(tmp_path / "test" / "wide", [shards.VideoRecord(
        "w", np.ones((1, 2, 16), np.float32), 0, "real", "normal", "normal", 32)])
    assert cli.main(["inspect", str(tmp_path), "--no-norms"]) == 1
    assert "feature_dim" in capsys.readouterr().err
