"""The one ground-truth reader of both sides: temporal annotations, JSON, per-video masks, pickles."""
import json
import subprocess
import sys

import numpy as np
import pytest

from pavad_jax import ground_truth
from pavad_jax.ground_truth import GroundTruthError, VideoTruth


def test_ucf_and_xd_temporal_annotations(tmp_path):
    txt = tmp_path / "ann.txt"
    txt.write_text("Arson/Arson022_x264.mp4 100 Arson 10 20 30 35\n"
                   "Testing_Normal_Videos_Anomaly/Normal_Videos_872_x264.mp4 530 Normal -1 -1 -1 -1\n"
                   "v=abc__#1_label_B4-0-0 0 5\n")
    truths = ground_truth.read_ground_truth(txt)
    arson = truths["Arson022_x264"]
    assert (arson.intervals, arson.num_frames, arson.anomaly_class, arson.abnormal) == (
        ((10, 20), (30, 35)), 100, "Arson", True)
    normal = truths["Normal_Videos_872_x264"]
    assert (normal.intervals, normal.anomaly_class, normal.abnormal) == ((), "Normal", False)
    xd = truths["v=abc__#1_label_B4-0-0"]  # XD names keep their dots and '=' signs; no frame count
    assert (xd.intervals, xd.num_frames, xd.anomaly_class) == (((0, 5),), None, None)
    labels = arson.frame_labels(40)
    assert labels.dtype == np.uint8 and labels.sum() == 15 and labels[10] == 1 and labels[20] == 0
    np.testing.assert_array_equal(xd.frame_labels(8), [1, 1, 1, 1, 1, 0, 0, 0])
    (tmp_path / "bad.txt").write_text("a 1 2 3\n")
    with pytest.raises(GroundTruthError, match=r"bad.txt: line 1: odd number"):
        ground_truth.read_ground_truth(tmp_path / "bad.txt")


def test_json_labels_and_the_cut_or_pad_convention(tmp_path):
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"a.mp4": [0, 1, 1], "b": {"intervals": [[1, 3]], "class": "Fight"}}))
    truths = ground_truth.read_ground_truth(js)
    np.testing.assert_array_equal(truths["a"].frame_labels(5), [0, 1, 1, 1, 1])  # last label repeated
    np.testing.assert_array_equal(truths["a"].frame_labels(2), [0, 1])
    np.testing.assert_array_equal(truths["b"].frame_labels(4), [0, 1, 1, 0])
    assert truths["b"].anomaly_class == "Fight"
    # A UCF annotation knows its frame count: labels past it repeat its last frame's label.
    ends_abnormal = VideoTruth(intervals=((2, 4),), num_frames=4)
    np.testing.assert_array_equal(ends_abnormal.frame_labels(6), [0, 0, 1, 1, 1, 1])
    js.write_text(json.dumps({"a": [0, 2]}))
    with pytest.raises(GroundTruthError, match=r"labels.json: labels of video 'a' must be a 1-D array of 0/1"):
        ground_truth.read_ground_truth(js)


def test_lookup_by_name_or_unique_prefix():
    truths = {"v1__0": VideoTruth(), "v2": VideoTruth(num_frames=3), "v3_a": VideoTruth(), "v3_b": VideoTruth()}
    assert ground_truth.find(truths, "v2").num_frames == 3
    assert ground_truth.find(truths, "v1") is truths["v1__0"]
    assert ground_truth.find(truths, "v9") is None
    with pytest.raises(GroundTruthError, match="several ground-truth entries match video 'v3'"):
        ground_truth.find(truths, "v3")
    assert ground_truth.video_stem("G:\\x\\Bad.Boys.1995__#00-26-51_label_B2-0-0.mp4") == \
        "Bad.Boys.1995__#00-26-51_label_B2-0-0"


def test_shanghaitech_frame_masks_and_label_pickle_agree(annotations_dir):
    """SHT's per-video masks and its dict pickle give the same per-frame labels."""
    masks = ground_truth.read_ground_truth(annotations_dir / "sht" / "test_frame_mask")
    pickled = ground_truth.read_ground_truth(annotations_dir / "sht" / "gt-sh2-dic.pickle")
    assert len(masks) == 107 and len(pickled) == 437
    for name in ("01_0014", "03_0031"):
        expected = np.load(annotations_dir / "sht" / "test_frame_mask" / f"{name}.npy")
        np.testing.assert_array_equal(masks[name].frame_labels(len(expected)), expected)
        np.testing.assert_array_equal(pickled[name].frame_labels(len(expected)), expected)


def test_ucf_annotation_and_per_video_labels_agree(annotations_dir):
    """UCF_Annotation.txt and single_gt/ describe the same 290 test videos."""
    ucf = annotations_dir / "ucf"
    annotated = ground_truth.read_ground_truth(ucf / "UCF_Annotation.txt")
    per_video = ground_truth.read_ground_truth(ucf / "single_gt")
    assert len(annotated) == 290 and sum(t.abnormal for t in annotated.values()) == 140
    for name in ("Abuse028_x264", "Explosion008_x264", "Normal_Videos_003_x264"):
        truth = ground_truth.find(per_video, name)
        length = len(truth.labels)
        np.testing.assert_array_equal(annotated[name].frame_labels(length), truth.frame_labels(length))


def test_the_module_imports_neither_jax_nor_torch():
    code = ("import sys, pavad_jax.ground_truth; "
            "assert not {'jax', 'torch', 'flax'} & set(sys.modules), sorted({'jax', 'torch'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)
