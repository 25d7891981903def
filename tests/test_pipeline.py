"""Input pipelines: reference resampling, grain training batches, device-resident sampling, eval buckets."""
import json

import jax
import numpy as np
import pytest

from pavad_jax.data import pipeline
from pavad_jax.data.resample import resample_segments, segment_bounds
from pavad_jax.shards import ShardSet, VideoRecord, write_shard_set

D = 8
T = 16
# Every feature row carries its video number in dim 0 and its crop in dim 1, so a resampled
# row (a mean over rows of one crop) still says which (video, crop) it came from.
TRAIN_SPEC = [  # (stream, source, videos, crops)
    ("normal", "real", 12, 3),
    ("abnormal", "pseudo", 10, 1),
    ("abnormal", "real", 6, 3),
    ("pseudo-normal", "pseudo", 4, 1),
]
TEST_LENGTHS = [5, 17, 40, 64, 70, 130, 300, 9]


def reference_process_feat(feat, length):
    """UR-DMU's loop, as in the reference loaders (shared/reference/urdmu.md)."""
    new_feat = np.zeros((length, feat.shape[1])).astype(np.float32)
    r = np.linspace(0, len(feat), length + 1, dtype=int)
    for i in range(length):
        if r[i] != r[i + 1]:
            new_feat[i, :] = np.mean(feat[r[i]:r[i + 1], :], 0)
        else:
            new_feat[i, :] = feat[r[i], :]
    return new_feat


def _video(number, stream, source, crops, length, rng, frame_labels=None):
    features = rng.normal(size=(crops, length, D)).astype(np.float32)
    features[:, :, 0] = number
    features[:, :, 1] = np.arange(crops)[:, None]
    label = int(stream == "abnormal")
    return VideoRecord(id=f"{stream}-{source}-{number}", features=features, label=label, source=source,
                       stream=stream, anomaly_class="Fighting" if label else "normal",
                       num_frames=0 if frame_labels is None else len(frame_labels), frame_labels=frame_labels)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny dataset: train/ split over two shard sets (every stream and source), test/ one set."""
    root = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(0)
    train, number = [], 0
    for stream, source, videos, crops in TRAIN_SPEC:
        for _ in range(videos):
            train.append(_video(number, stream, source, crops, int(rng.integers(3, 60)), rng))
            number += 1
    write_shard_set(root / "train" / "worker-0", train[::2], records_per_file=5)
    write_shard_set(root / "train" / "worker-1", train[1::2], records_per_file=5)
    test = []
    for i, length in enumerate(TEST_LENGTHS):
        abnormal = i % 2 == 1
        # Frame labels deliberately not T*16 long: some longer (truncated), some shorter (padded).
        n_frames = length * 16 + (7 if i % 3 == 0 else -5)
        labels = (np.arange(n_frames) > n_frames // 2).astype(np.uint8) if abnormal else None
        test.append(_video(100 + i, "abnormal" if abnormal else "normal", "real", 3, length, rng, labels))
    write_shard_set(root / "test", test, dtype="float32")
    return root


@pytest.fixture
def config(dataset):
    c = pipeline.default_data_config()
    c.dir = str(dataset)
    c.segments = T
    c.batch.normal, c.batch.abnormal, c.batch.pseudo_normal = 4, 4, 2
    c.eval_buckets = (16, 64, 128)
    c.eval_batch_size = 4
    c.seed = 7
    return c


def _row_ids(features):
    """(video number, crop) of each row of a (b, T, D) batch."""
    return [(int(v), int(c)) for v, c in features[:, 0, :2]]


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ----------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("segments", [32, 200])
@pytest.mark.parametrize("length", [1, 2, 3, 31, 199, 200, 201, 457, 1000])
def test_resample_is_bit_identical_to_reference_loop(length, segments):
    rng = np.random.default_rng(length)
    features = (rng.normal(size=(2, length, 64)) * 3 + 1).astype(np.float16)  # stored dtype
    out = resample_segments(features, segments)
    assert out.shape == (2, segments, 64) and out.dtype == np.float32
    for crop in range(2):
        expected = reference_process_feat(features[crop].astype(np.float32), segments)
        np.testing.assert_array_equal(out[crop], expected)


def test_bins_never_start_past_the_end():
    # The reference indexes feat[r[i]] for empty bins; that is valid only if r[i] < len.
    for segments in (32, 200):
        for length in range(1, 2001):
            assert segment_bounds(length, segments)[:-1].max() < length, (length, segments)


def test_short_video_repeats_rows_as_reference():
    features = np.arange(3, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    out = resample_segments(features, 7)
    # r = [0, 0, 0, 1, 1, 2, 2, 3]: empty bins copy feat[r[i]], full bins hold one row.
    np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 1, 1, 2, 2])


def test_resample_rejects_empty_video():
    with pytest.raises(ValueError, match="no time steps"):
        resample_segments(np.zeros((0, 4), np.float32), 8)


# ----------------------------------------------------------------------------- grain training path


def test_default_config_has_documented_fields():
    c = pipeline.default_data_config()
    assert c.segments == 200 and c.batch.normal == c.batch.abnormal == 64 and c.batch.pseudo_normal == 0
    assert c.abnormal_source == "pseudo" and c.normal_source == "real" and c.worker_count == 0
    c.device_resident = False  # a bool is accepted as well as "auto"
    assert pipeline._resident_mode(c.device_resident) is False


def test_train_batch_layout_and_content(config, dataset):
    shards = ShardSet(dataset / "train")
    batch = next(pipeline.make_train_iterator(config, shards=shards))
    b = 4 + 4 + 2
    assert batch["features"].shape == (b, T, D) and batch["features"].dtype == np.float32
    assert batch["label"].dtype == np.float32 and batch["synthetic"].dtype == np.float32
    np.testing.assert_array_equal(batch["stream"], [0] * 4 + [1] * 4 + [2] * 2)
    assert batch["stream"].dtype == np.int32
    np.testing.assert_array_equal(batch["label"], [0] * 4 + [1] * 4 + [0] * 2)
    # abnormal_source="pseudo": every abnormal row is synthetic; normals are real.
    np.testing.assert_array_equal(batch["synthetic"], [0] * 4 + [1] * 4 + [1] * 2)
    by_number = {int(r.features[0, 0, 0]): r for r in shards}
    for row, (number, crop) in zip(batch["features"], _row_ids(batch["features"])):
        record = by_number[number]
        np.testing.assert_array_equal(row, reference_process_feat(record.features[crop].astype(np.float32), T))
    streams = [by_number[n].stream for n, _ in _row_ids(batch["features"])]
    assert streams == ["normal"] * 4 + ["abnormal"] * 4 + ["pseudo-normal"] * 2


def test_sources_select_the_abnormal_stream(config):
    config.abnormal_source = "real"
    batch = next(pipeline.make_train_iterator(config))
    np.testing.assert_array_equal(batch["synthetic"][4:8], 0)
    config.abnormal_source = "any"
    seen = {s for batch in _take(pipeline.make_train_iterator(config), 6) for s in batch["synthetic"][4:8]}
    assert seen == {0.0, 1.0}


def test_same_seed_same_batches_other_seed_differs(config):
    first = _take(pipeline.make_train_iterator(config, seed=3), 3)
    _assert_batches_equal(first, _take(pipeline.make_train_iterator(config, seed=3), 3))
    other = _take(pipeline.make_train_iterator(config, seed=4), 3)
    assert any(not np.array_equal(a["features"], b["features"]) for a, b in zip(first, other))


def test_restored_iterator_continues_identically(config):
    uninterrupted = _take(pipeline.make_train_iterator(config), 7)
    it = pipeline.make_train_iterator(config)
    _take(it, 3)
    state = it.get_state()
    restored = pipeline.make_train_iterator(config)
    restored.set_state(json.loads(json.dumps(state)))  # what a checkpoint stores
    _assert_batches_equal(_take(restored, 4), uninterrupted[3:])


def test_crop_epoch_visits_every_video_crop_pair_once(config):
    # sample_unit="crop" (the default): 12 normal videos x 3 crops = 36 samples, 4 per step, so
    # steps 0-8 are one epoch and steps 9-17 the next.
    assert config.sample_unit == "crop"
    batches = _take(pipeline.make_train_iterator(config), 18)
    pairs = [pair for b in batches for pair in _row_ids(b["features"][:4])]
    every_pair = sorted((v, c) for v in range(12) for c in range(3))
    assert sorted(pairs[:36]) == every_pair and sorted(pairs[36:]) == every_pair
    assert pairs[:36] != pairs[36:]  # reshuffled each epoch
    # 10 pseudo-abnormal videos of one crop, 4 per step: 8 per epoch (drop_last), never a repeat.
    abnormal = [n for b in batches for n, _ in _row_ids(b["features"][4:8])]
    for epoch in range(0, len(abnormal) - 7, 8):
        assert len(set(abnormal[epoch:epoch + 8])) == 8
    assert len(set(abnormal)) == 10  # the dropped remainder differs between epochs


def test_video_epoch_visits_each_video_once(config):
    # sample_unit="video": 12 normal videos, 4 per step: 3 steps are exactly one epoch.
    config.sample_unit = "video"
    batches = _take(pipeline.make_train_iterator(config), 3)
    normals = [n for b in batches for n, _ in _row_ids(b["features"][:4])]
    assert sorted(normals) == list(range(12))
    crops = {c for b in _take(pipeline.make_train_iterator(config), 9) for _, c in _row_ids(b["features"][:4])}
    assert crops == {0, 1, 2}


def test_stream_smaller_than_its_count_wraps_over_epochs(config):
    # 4 pseudo-normal videos, 6 per step: no epoch holds a whole batch, so batches span epochs.
    config.batch.pseudo_normal = 6
    batches = _take(pipeline.make_train_iterator(config), 2)
    rows = [n for b in batches for n, _ in _row_ids(b["features"][8:])]
    assert len(rows) == 12 and set(rows) == set(range(28, 32))
    assert all(rows.count(n) == 3 for n in set(rows))  # still every video once per epoch


def test_abnormal_clips_keeps_a_fixed_subset_on_both_paths(config, dataset):
    shards = ShardSet(dataset / "train")
    full = pipeline.select_streams(shards, config)
    config.abnormal_clips = 3
    streams = pipeline.select_streams(shards, config)
    assert len(streams[1]) == 3 and set(streams[1]) <= set(full[1])
    np.testing.assert_array_equal(streams[0], full[0])  # the other streams are untouched
    np.testing.assert_array_equal(streams[1], pipeline.select_streams(shards, config)[1])  # fixed by data.seed
    kept = {int(shards.entries[i]["id"].rsplit("-", 1)[1]) for i in streams[1]}
    grain_rows = {n for b in _take(pipeline.make_train_iterator(config, shards=shards), 4)
                  for n, _ in _row_ids(b["features"][4:8])}
    sampler = pipeline.DeviceResidentSampler.from_config(config, shards=shards)
    device_rows = {n for step in range(4) for n, _ in _row_ids(np.asarray(sampler.sample(step)["features"][4:8]))}
    assert grain_rows == device_rows == kept
    config.abnormal_clips = 11
    with pytest.raises(ValueError, match="abnormal_clips = 11: .* has only 10 abnormal-stream videos"):
        pipeline.select_streams(shards, config)


def test_hosts_slices_concatenate_to_the_global_batch(config):
    steps = 9  # one epoch of the normal stream's 36 crop sequences
    single = _take(pipeline.make_train_iterator(config), steps)
    hosts = [_take(pipeline.make_train_iterator(config, process_index=p, process_count=2), steps) for p in (0, 1)]
    for step in range(steps):
        h0, h1 = hosts[0][step], hosts[1][step]
        assert h0["features"].shape == (5, T, D)
        for lo, hi, half in ((0, 4, 2), (4, 8, 2), (8, 10, 1)):  # per stream: host 0 rows, then host 1
            for key in single[step]:
                joined = np.concatenate([h0[key][lo // 2:lo // 2 + half], h1[key][lo // 2:lo // 2 + half]])
                np.testing.assert_array_equal(joined, single[step][key][lo:hi], err_msg=f"{key} step {step}")
    # Within that epoch the two hosts see disjoint samples.
    seen = [{pair for b in hosts[p] for pair in _row_ids(b["features"][:2])} for p in (0, 1)]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 36


def test_indivisible_counts_and_missing_streams_are_named(config, tmp_path):
    with pytest.raises(ValueError, match="batch.pseudo_normal=2 is not divisible by process_count=4"):
        next(pipeline.make_train_iterator(config, process_count=4))
    config.dir = str(tmp_path)
    (tmp_path / "train").mkdir()
    write_shard_set(tmp_path / "train", [_video(0, "normal", "real", 1, 5, np.random.default_rng(0))])
    with pytest.raises(ValueError, match="no records for stream 'abnormal'"):
        pipeline.make_train_iterator(config)
    config.dir = ""
    with pytest.raises(ValueError, match="config.data.dir is empty"):
        pipeline.make_train_iterator(config)


def test_worker_processes_give_the_same_batches(config):
    expected = _take(pipeline.make_train_iterator(config), 4)
    config.worker_count = 2
    it = pipeline.make_train_iterator(config)
    try:
        _assert_batches_equal(_take(it, 4), expected)
    finally:
        it.close()


# ----------------------------------------------------------------------------- device-resident path


@pytest.mark.parametrize("unit, dtype, pseudo_normal", [
    ("crop", "float32", 2), ("video", "float32", 2), ("crop", "bfloat16", 6), ("video", "float16", 6)])
def test_device_sampler_gives_the_grain_batches_bit_for_bit(config, dataset, unit, dtype, pseudo_normal):
    # 12 steps cross epoch boundaries of every stream (crop: 9, 2 and 2 or 2/3 steps per epoch;
    # video: 3, 2 and 2); pseudo_normal = 6 > its 4 videos makes steps span several epochs.
    config.sample_unit, config.table_dtype, config.batch.pseudo_normal = unit, dtype, pseudo_normal
    shards = ShardSet(dataset / "train")
    steps = 12
    expected = _take(pipeline.make_train_iterator(config, shards=shards), steps)
    sampler = pipeline.DeviceResidentSampler.from_config(config, shards=shards)
    assert sampler.table.dtype == np.dtype(pipeline.TABLE_DTYPES[dtype])
    traces = []

    @jax.jit
    def sample(sampler, step):
        traces.append(1)
        return sampler.sample(step)

    got = [jax.device_get(sample(sampler, np.int32(step))) for step in range(steps)]
    assert len(traces) == 1  # one compilation for every step
    _assert_batches_equal(got, expected)
    for batch in got:
        assert batch["features"].dtype == np.float32
    # The rounding really happened: a float32 run differs, and by the storage precision at most.
    if dtype != "float32":
        config.table_dtype = "float32"
        exact = next(pipeline.make_train_iterator(config, shards=shards))["features"]
        assert not np.array_equal(exact, got[0]["features"])
        np.testing.assert_allclose(got[0]["features"], exact, rtol=2**-7, atol=1e-6)


def test_device_sampler_rows_are_resampled_crops(config, dataset):
    shards = ShardSet(dataset / "train")
    by_number = {int(e["id"].rsplit("-", 1)[1]): i for i, e in enumerate(shards.entries)}
    batch = jax.device_get(pipeline.DeviceResidentSampler.from_config(config, shards=shards).sample(3))
    np.testing.assert_array_equal(batch["stream"], [0] * 4 + [1] * 4 + [2] * 2)
    np.testing.assert_array_equal(batch["label"], [0] * 4 + [1] * 4 + [0] * 2)
    for row, (number, crop) in zip(batch["features"], _row_ids(batch["features"])):
        np.testing.assert_array_equal(row, resample_segments(shards[by_number[number]].features[crop], T))


def test_sample_unit_and_table_dtype_are_checked(config):
    config.sample_unit = "frame"
    with pytest.raises(ValueError, match="data.sample_unit is 'frame'"):
        pipeline.make_train_iterator(config)
    config.sample_unit, config.table_dtype = "crop", "int8"
    with pytest.raises(ValueError, match="data.table_dtype is 'int8'"):
        pipeline.make_train_iterator(config)


def test_auto_device_resident_follows_the_budget(config):
    shards = pipeline.open_split(config, "train")
    nbytes = pipeline.resampled_table_bytes(shards, pipeline.select_streams(shards, config), T)
    rows = 12 * 3 + 10 * 1 + 4 * 1  # abnormal_source="pseudo": real abnormals are not used
    assert nbytes == rows * T * D * 4
    # On CPU every simulated device keeps a copy in the same RAM: the budget is shared.
    copies = jax.local_device_count()
    config.device_budget_gb = nbytes * copies / pipeline.GIB
    assert pipeline.use_device_resident(config, shards)
    config.device_budget_gb = (nbytes * copies - copies) / pipeline.GIB
    assert not pipeline.use_device_resident(config, shards)
    config.table_dtype = "bfloat16"  # half the bytes: fits again
    assert pipeline.use_device_resident(config, shards)
    config.table_dtype = "float32"
    config.device_resident = "true"
    assert pipeline.use_device_resident(config, shards)
    config.device_resident = "sometimes"
    with pytest.raises(ValueError, match="device_resident"):
        pipeline.use_device_resident(config, shards)


# ----------------------------------------------------------------------------- evaluation


def test_bucket_lengths_bound_the_padding(config):
    buckets = (16, 64, 128)
    assert [pipeline.bucket_length(t, buckets) for t in (1, 16, 17, 128, 129, 300, 1000, 6749)] == [
        16, 16, 64, 128, 144, 320, 1024, 6784]
    for t in range(129, 9000, 7):  # beyond the largest bucket: under 1/8 padding
        length = pipeline.bucket_length(t, buckets, 0.125)
        assert t <= length < t * 1.125 and length % 16 == 0
    assert [pipeline.bucket_batch_size(b, config) for b in (16, 64, 128)] == [4, 1, 1]
    assert pipeline.bucket_batch_size(16, config, multiple=8) == 8


def test_short_videos_share_rows_and_fill_the_ends_of_longer_ones():
    rows = pipeline.pack_eval_rows(TEST_LENGTHS, (16, 64, 128))
    # 300 and 130 are longer than every bucket: rows of their own (320, 144); the shorter ones
    # fill the leftover room, longest first into the row with the least room that holds them.
    assert [(r.length, [TEST_LENGTHS[v] for v in r.videos]) for r in rows] == [
        (320, [300]), (144, [130, 9, 5]), (128, [70, 40, 17]), (64, [64])]
    for row in rows:
        ends = [s + TEST_LENGTHS[v] for v, s in zip(row.videos, row.starts)]
        assert list(row.starts) == [0] + ends[:-1] and ends[-1] <= row.length  # back to back, inside the row
    assert sorted(v for r in rows for v in r.videos) == list(range(len(TEST_LENGTHS)))


def test_ucf_crime_test_set_packs_into_few_shapes_with_little_padding():
    from pavad_jax.data.synthetic import ucf_test_lengths

    lengths = [t for _, t in ucf_test_lengths()]
    config = pipeline.default_data_config()
    plan = pipeline._plan_eval_batches(np.asarray(lengths), config, multiple=1)
    shapes = [(len(rows), next(r.length for r in rows if r)) for rows in plan]
    padded = sum(rows * length for rows, length in shapes)
    assert len(set(shapes)) <= 8  # compiled programs
    assert sum(lengths) / padded > 0.95
    for rows in plan:
        for row in rows:
            if row is not None and len(row.videos) == 1:  # a row of its own: padded by < 1/8
                assert row.length < 1.125 * lengths[row.videos[0]] or row.length in config.eval_buckets


def test_eval_batches_cover_every_video_once(config, dataset):
    batches, eval_set = pipeline.make_eval_batches(config)
    shards = ShardSet(dataset / "test")
    assert len(eval_set) == len(TEST_LENGTHS) and eval_set.crops == 3
    np.testing.assert_array_equal(eval_set.lengths, TEST_LENGTHS)
    assert sorted(batches.shapes()) == [(1, 64), (1, 128), (1, 144), (1, 320)]
    assert batches.segments == sum(TEST_LENGTHS)
    seen = []
    for batch in batches:
        features, ids = batch["features"], batch["segment_ids"]
        assert features.dtype == np.float32 and ids.dtype == np.int32 and batch["video"].dtype == np.int32
        covered = np.zeros(ids.shape, bool)
        for row in range(ids.shape[0]):
            for slot, (v, start) in enumerate(zip(batch["video"][row], batch["start"][row])):
                if v < 0:
                    continue
                seen.append(int(v))
                t = TEST_LENGTHS[v]
                assert np.all(ids[row, start:start + t] == slot + 1)
                np.testing.assert_array_equal(features[row, :, start:start + t], shards[int(v)].features)
                covered[row, start:start + t] = True
        assert np.all(ids[~covered] == 0) and not features.transpose(0, 2, 1, 3)[~covered].any()
    assert sorted(seen) == list(range(len(TEST_LENGTHS)))


def test_eval_frame_labels_are_aligned(config, dataset):
    _, eval_set = pipeline.make_eval_batches(config)
    shards = ShardSet(dataset / "test")
    for i, labels in enumerate(eval_set.frame_labels):
        t = TEST_LENGTHS[i]
        assert labels.shape == (t * 16,) and labels.dtype == np.uint8
        stored = shards[i].frame_labels
        if stored is None:  # normal test video without a mask
            assert not labels.any()
        elif len(stored) >= t * 16:
            np.testing.assert_array_equal(labels, stored[:t * 16])
        else:
            np.testing.assert_array_equal(labels[:len(stored)], stored)
            assert (labels[len(stored):] == stored[-1]).all()
    assert eval_set.frame_ground_truth().shape == (16 * sum(TEST_LENGTHS),)


def test_eval_hosts_split_rows_of_the_same_batches(config):
    single, _ = pipeline.make_eval_batches(config, batch_multiple=2)
    halves = [pipeline.make_eval_batches(config, process_index=p, process_count=2)[0] for p in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == len(single)
    assert all(rows == 2 for rows, _ in single.shapes())
    for whole, h0, h1 in zip(single, *halves):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), whole[key], err_msg=key)


def test_eval_rejects_mixed_crop_counts(config, tmp_path):
    rng = np.random.default_rng(0)
    write_shard_set(tmp_path / "test", [_video(0, "normal", "real", 1, 5, rng), _video(1, "normal", "real", 3, 5, rng)])
    config.dir = str(tmp_path)
    with pytest.raises(ValueError, match=r"share one crop count, found crops=\[1, 3\]"):
        pipeline.make_eval_batches(config)


def test_command_line_reports_both_paths(dataset, capsys):
    pipeline.main([str(dataset), "--segments", "16", "--batch", "4,4,2", "--steps", "2"])
    out = capsys.readouterr().out
    assert "streams [12, 10, 4] videos" in out and "grain:" in out and "ms/step" in out
    rows = 12 * 3 + 10 + 4
    assert f"device table {rows * 16 * D * 4 / 2**20:.1f} MiB" in out
    assert f"eval: {len(TEST_LENGTHS)} videos" in out
