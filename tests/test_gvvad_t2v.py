"""GV-VAD text-to-video with tiny Wan and CogVideoX pipelines built from configs."""
import dataclasses
import json

import numpy as np
import pytest

from generation import media, workers
from generation.gvvad import t2v

# 64 px, not 32: libx264 encodes 32 x 32 frames differently from one run to the next in a process
# that has decoded a video before (measured: 7 distinct files from 12 encodes of the same frames;
# at 64, 128 and 256 px every encode is the same), and the sharding test compares decoded frames.
TINY_WAN = t2v.T2VSettings(model="tiny", height=64, width=64, num_frames=9, fps=8, steps=2,
                           negative_prompt="", max_sequence_length=16, dtype="float32")


def write_descriptions(path, count=2):
    workers.write_jsonl(path, [{"id": f"d{i}", "text": f"a person walks near the camera {i}",
                                "label": i % 2, "kind": "abnormal" if i % 2 else "normal",
                                "anomaly_class": "Arson" if i % 2 else "normal"}
                               for i in range(count)])


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Two descriptions generated in one process: (descriptions path, output folder, summary)."""
    root = tmp_path_factory.mktemp("t2v")
    write_descriptions(root / "d.jsonl")
    summary = t2v.run_t2v(descriptions=str(root / "d.jsonl"), out_dir=str(root / "videos"),
                          settings=TINY_WAN)
    return root / "d.jsonl", root / "videos", summary


def test_run_writes_videos_and_metadata_and_resumes(generated):
    descriptions, out, summary = generated
    assert sorted(summary.processed) == ["d0", "d1"] and not summary.failed
    frames = media.read_frames(out / "d1.mp4")
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8
    meta = json.loads((out / "d1.json").read_text())
    assert meta["label"] == 1 and meta["anomaly_class"] == "Arson" and meta["num_frames"] == 9
    assert meta["seed"] == t2v.video_seed(0, "d1") and meta["backend"] == "wan"
    assert not list(out.glob(".*partial*"))  # atomic writes leave no temporary files

    before = (out / "d0.mp4").stat().st_mtime_ns
    again = t2v.run_t2v(descriptions=str(descriptions), out_dir=str(out), settings=TINY_WAN)
    assert sorted(again.skipped) == ["d0", "d1"] and not again.processed
    assert (out / "d0.mp4").stat().st_mtime_ns == before


def test_sharded_runs_split_the_work_and_give_the_same_videos(generated, tmp_path):
    descriptions, _, _ = generated
    # The one-shard reference, made in this process like the shards.
    single = tmp_path / "single"
    t2v.run_t2v(descriptions=str(descriptions), out_dir=str(single), settings=TINY_WAN)
    for index in range(2):
        summary = t2v.run_t2v(descriptions=str(descriptions), out_dir=str(tmp_path),
                              settings=TINY_WAN, shard_index=index, num_shards=2)
        assert summary.processed == [f"d{index}"]
    for name in ("d0", "d1"):
        np.testing.assert_array_equal(media.read_frames(tmp_path / f"{name}.mp4"),
                                      media.read_frames(single / f"{name}.mp4"))
    assert t2v.video_seed(0, "d0") != t2v.video_seed(0, "d1") != t2v.video_seed(1, "d1")


def test_tiny_cogvideox_generates_frames_of_the_requested_size():
    settings = dataclasses.replace(t2v.COGVIDEOX_DEFAULTS, model="tiny", height=64, width=64,
                                   num_frames=9, steps=2, max_sequence_length=16, dtype="float32")
    frames = t2v.generate_video(t2v.load_pipeline(settings), "a car on a road", settings, seed=0)
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.std() > 0  # decoded noise, not a blank video


@pytest.mark.parametrize("field, value, message", [
    ("num_frames", 10, "4k\\+1"), ("height", 30, "multiples of 16"), ("backend", "sora", "backend")])
def test_bad_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY_WAN, **{field: value}).check()


def test_empty_description_text_is_recorded_as_a_failure(tmp_path):
    workers.write_jsonl(tmp_path / "d.jsonl", [{"id": "blank", "text": " "}])
    summary = t2v.run_t2v(descriptions=str(tmp_path / "d.jsonl"), out_dir=str(tmp_path / "v"),
                          settings=TINY_WAN)
    assert summary.failed == ["blank"]
    error = workers.read_jsonl(tmp_path / "v" / "errors.jsonl")[0]
    assert "field 'text' is empty" in error["error"]
