"""Importers against the real split lists and ground truth of UCF-Crime, ShanghaiTech and XD."""
import math
import pickle

import numpy as np
import pytest

from pavad_jax import shards
from pavad_jax.data import importers
from pavad_jax.data.importers import ImporterError

D = 8  # tiny random features: the point is the bookkeeping, not the values


def read_segments(path):
    return [(name, int(t)) for name, t in (line.split() for line in importers.read_list(path))]


def write_urdmu_features(root, list_file, lengths, crops=10):
    """One random (T, D) file per crop line of a UR-DMU list, with the real per-video T."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for line in importers.read_list(list_file):
        name = importers.basename(line)
        video = name.rsplit("__", 1)[0]
        np.save(root / name, rng.random((lengths[video], D), dtype=np.float32))


def concatenated_labels(set_dir):
    data = shards.ShardSet(set_dir)
    return [shards.aligned_frame_labels(data[i]) for i in range(len(data))], data


@pytest.fixture(scope="module")
def ucf_test_features(annotations_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf_features")
    lengths = dict(read_segments(annotations_dir / "ucf" / "test_num_segments.txt"))
    write_urdmu_features(root, annotations_dir / "ucf" / "UCF_Test.list", lengths)
    return root, lengths


@pytest.mark.parametrize("gt", ["single_gt", "UCF_Annotation.txt", "gt-ucf.npy"])
def test_urdmu_ucf_test_set_reproduces_gt_ucf(annotations_dir, ucf_test_features, tmp_path, gt):
    ucf = annotations_dir / "ucf"
    root, lengths = ucf_test_features
    manifest = importers.import_urdmu(ucf / "UCF_Test.list", root, tmp_path, dataset="ucf", gt=ucf / gt)
    labels, data = concatenated_labels(tmp_path)
    np.testing.assert_array_equal(np.concatenate(labels), np.load(ucf / "gt-ucf.npy").astype(np.uint8))
    order = importers.read_list(ucf / "test_video_order.txt")
    assert [e["id"] for e in data.entries] == order
    assert [e["T"] for e in data.entries] == [lengths[n] for n in order]
    assert manifest["crops"] == [10] and manifest["feature_dim"] == D
    assert manifest["counts"]["label"] == {"0": 150, "1": 140}
    assert data.entries[0]["anomaly_class"] == "Abuse" and data.entries[-1]["anomaly_class"] == "normal"
    assert all(e["num_frames"] == e["T"] * 16 for e in data.entries)


def test_urdmu_crops_are_stacked_in_crop_order(annotations_dir, ucf_test_features, tmp_path):
    root, _ = ucf_test_features
    importers.import_urdmu(annotations_dir / "ucf" / "UCF_Test.list", root, tmp_path, dataset="ucf",
                           dtype="float32")
    record = shards.ShardSet(tmp_path)[1]
    for k in (0, 3, 9):
        np.testing.assert_array_equal(record.features[k], np.load(root / f"{record.id}__{k}.npy"))


def test_concatenated_gt_with_wrong_lengths_is_refused(annotations_dir, tmp_path):
    ucf = annotations_dir / "ucf"
    lengths = dict(read_segments(ucf / "test_num_segments.txt"))
    lengths["Abuse030_x264"] += 1  # one segment too many shifts every later video
    write_urdmu_features(tmp_path / "f", ucf / "UCF_Test.list", lengths, crops=10)
    with pytest.raises(ImporterError, match="gt-ucf.npy"):
        importers.import_urdmu(ucf / "UCF_Test.list", tmp_path / "f", tmp_path / "out", dataset="ucf",
                               gt=ucf / "gt-ucf.npy")
    assert not (tmp_path / "out" / "manifest.json").exists()


def write_rtfm_features(root, list_file, lengths, crops=10):
    """One random (T, crops, D) file per line of an RTFM list."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for line in importers.read_list(list_file):
        name = importers.basename(line)
        np.save(root / name, rng.random((lengths[name.removesuffix("_i3d.npy")], crops, D), dtype=np.float32))


@pytest.mark.parametrize("gt", ["test_frame_mask", "gt-sh2-dic.pickle"])
def test_rtfm_sht_test_set_reproduces_gt_sh_on_abnormal_videos(annotations_dir, tmp_path, gt):
    sht = annotations_dir / "sht"
    abnormal = read_segments(sht / "test_abnormal_num_segments_rtfm.txt")
    with open(sht / "gt-sh2-dic.pickle", "rb") as f:
        frames = {name: len(v) for name, v in pickle.load(f).items()}
    lengths = {name: math.ceil(n / 16) for name, n in frames.items()} | dict(abnormal)
    list_file = sht / "shanghai-i3d-test-10crop.list"
    write_rtfm_features(tmp_path / "f", list_file, lengths)
    manifest = importers.import_rtfm(list_file, tmp_path / "f", tmp_path / "out", dataset="sht", gt=sht / gt)
    labels, data = concatenated_labels(tmp_path / "out")
    n_abnormal_frames = sum(t * 16 for _, t in abnormal)
    gt_sh = np.load(sht / "gt-sh.npy").astype(np.uint8)
    np.testing.assert_array_equal(np.concatenate(labels[:44]), gt_sh[:n_abnormal_frames])
    assert not np.concatenate(labels[44:]).any()  # normal test videos are all normal
    assert manifest["counts"]["stream"] == {"abnormal": 44, "normal": 155}
    assert data[0].features.shape == (10, abnormal[0][1], D)


def test_rtfm_ucf_test_set_reproduces_gt_ucf(annotations_dir, tmp_path):
    ucf = annotations_dir / "ucf"
    lengths = dict(read_segments(ucf / "test_num_segments.txt"))
    write_rtfm_features(tmp_path / "f", ucf / "ucf-i3d-test.list", lengths, crops=2)
    importers.import_rtfm(ucf / "ucf-i3d-test.list", tmp_path / "f", tmp_path / "out", dataset="ucf",
                          gt=ucf / "UCF_Annotation.txt")
    labels, data = concatenated_labels(tmp_path / "out")
    np.testing.assert_array_equal(np.concatenate(labels), np.load(ucf / "gt-ucf.npy").astype(np.uint8))
    assert data.entries[0]["crops"] == 2 and data.entries[0]["anomaly_class"] == "Abuse"


def test_rtfm_sht_train_classes_from_relabel_list(annotations_dir, tmp_path):
    sht = annotations_dir / "sht"
    list_file = sht / "shanghai-i3d-train-10crop.list"
    names = [importers.basename(x).removesuffix("_i3d.npy") for x in importers.read_list(list_file)]
    write_rtfm_features(tmp_path / "f", list_file, {n: 3 for n in names}, crops=2)
    classes = importers.read_sht_classes(sht / "relabel.list")
    manifest = importers.import_rtfm(list_file, tmp_path / "f", tmp_path / "out", dataset="sht",
                                     sht_classes=classes)
    entries = {e["id"]: e for e in manifest["records"]}
    assert manifest["counts"]["label"] == {"0": 175, "1": 63}
    assert entries["01_0014"]["anomaly_class"] == "cycling"
    assert entries["01_0026"]["anomaly_class"] == "fighting,chasing"
    assert all(e["anomaly_class"] == "normal" for e in manifest["records"][63:])
    assert not any(e["has_frame_labels"] for e in manifest["records"])


@pytest.mark.parametrize("list_name, videos, abnormal", [
    ("ucf/UCF_Train.list", 1610, 810), ("ucf/UCF_Test.list", 290, 140),
    ("xd/XD_Train.list", 3954, 1905), ("xd/XD_Test.list", 800, 500),
])
def test_labels_from_names_match_the_readme_counts(annotations_dir, list_name, videos, abnormal):
    """Every UR-DMU list is abnormal-first; names alone give the README's counts."""
    dataset = list_name.split("/")[0]
    names = list(importers.urdmu_videos(annotations_dir / list_name))
    labels = [importers.video_label(n, dataset) for n in names]
    assert len(names) == videos and sum(labels) == abnormal
    assert labels == [1] * abnormal + [0] * (videos - abnormal)
    assert all(importers.anomaly_class(n, dataset, l) not in ("normal", importers.UNKNOWN_CLASS)
               for n, l in zip(names, labels) if l)


def test_xd_labels_and_classes_from_names():
    assert importers.video_label("v=x__#1_label_A", "xd") == 0
    assert importers.video_label("Bad.Boys.1995__#00-26-51_00-27-53_label_B2-0-0", "xd") == 1
    assert importers.anomaly_class("Bad.Boys__#0_label_G-B2-B6", "xd", 1) == "Explosion,Shooting,Car accident"
    assert importers.anomaly_class("RoadAccidents021_x264", "ucf", 1) == "RoadAccidents"
    assert importers.video_label("Normal_Videos_003_x264", "ucf") == 0


@pytest.fixture(scope="module")
def xd_test_features(annotations_dir, tmp_path_factory):
    xd = annotations_dir / "xd"
    # XD's per-video GT files hold exactly T*16 labels: they give the real per-video T.
    gt_files = {p.name.rsplit("__", 1)[0]: p for p in (xd / "per_video_gt").glob("*.npy")}
    lengths = {n: len(np.load(p)) // 16 for n, p in gt_files.items()}
    root = tmp_path_factory.mktemp("xd_features")
    write_urdmu_features(root, xd / "XD_Test.list", lengths, crops=5)
    return root


@pytest.mark.parametrize("gt", ["per_video_gt", "XD_Annotation.txt"])
def test_urdmu_xd_test_set_reproduces_xd_gt(annotations_dir, xd_test_features, tmp_path, gt):
    xd = annotations_dir / "xd"
    manifest = importers.import_urdmu(xd / "XD_Test.list", xd_test_features, tmp_path / "out", dataset="xd",
                                      gt=xd / gt)
    labels, data = concatenated_labels(tmp_path / "out")
    np.testing.assert_array_equal(np.concatenate(labels), np.load(xd / "xd_gt.npy").astype(np.uint8))
    assert len(data) == 800 and manifest["crops"] == [5]
    assert all(e["label"] == int("_label_A" not in e["id"]) for e in data.entries)


def test_folder_layout_with_csv(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "a.npy", rng.random((5, D), dtype=np.float32))  # (T, D)
    np.save(tmp_path / "f" / "b.npy", rng.random((3, 4, D), dtype=np.float32))  # (crops, T, D)
    np.save(tmp_path / "f" / "c.npy", rng.random((2, 6, D), dtype=np.float32))
    (tmp_path / "labels.csv").write_text(
        "file,label,class,stream,source\n"
        "a.npy,0,,,\n"
        "b,1,Fighting,,pseudo\n"
        "c,0,,pseudo-normal,pseudo\n"
    )
    manifest = importers.import_folder(tmp_path / "f", tmp_path / "labels.csv", tmp_path / "out")
    data = shards.ShardSet(tmp_path / "out")
    assert [e["id"] for e in data.entries] == ["a", "b", "c"]
    assert [e["stream"] for e in data.entries] == ["normal", "abnormal", "pseudo-normal"]
    assert [e["source"] for e in data.entries] == ["real", "pseudo", "pseudo"]
    assert data[1].anomaly_class == "Fighting" and data[0].features.shape == (1, 5, D)
    assert manifest["counts"]["source"] == {"pseudo": 2, "real": 1}


def test_folder_layout_names_the_bad_csv_line(tmp_path):
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "a.npy", np.ones((5, D), np.float32))
    (tmp_path / "labels.csv").write_text("id,label\na,0\nmissing,1\n")
    with pytest.raises(ImporterError, match=r"labels.csv: line 3.*missing"):
        importers.import_folder(tmp_path / "f", tmp_path / "labels.csv", tmp_path / "out")
    (tmp_path / "bad.csv").write_text("id,label\na,yes\n")
    with pytest.raises(ImporterError, match=r"bad.csv: line 2: field 'label'"):
        importers.import_folder(tmp_path / "f", tmp_path / "bad.csv", tmp_path / "out2")


def test_missing_feature_file_names_the_list_line(annotations_dir, tmp_path):
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "unrelated.npy", np.ones((2, D)))
    with pytest.raises(ImporterError, match=r"UCF_Test.list: line 1: .*Abuse028_x264__0.npy"):
        importers.import_urdmu(annotations_dir / "ucf" / "UCF_Test.list", tmp_path / "f", tmp_path / "out",
                               dataset="ucf")
