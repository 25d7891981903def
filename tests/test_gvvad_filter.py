"""GV-VAD CLIP text-video filter: the score, the threshold rule, and the step on real MP4 files."""
import json

import numpy as np
import pytest

from generation import media, workers
from generation.gvvad import filter as video_filter

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def test_score_is_the_mean_frame_text_cosine():
    text = np.array([1.0, 0.0])
    frames = np.array([[2.0, 0.0], [0.0, 5.0], [3.0, 3.0]])  # cosines 1, 0, 1/sqrt(2)
    expected = (1.0 + 0.0 + 2 ** -0.5) / 3
    assert video_filter.text_video_score(frames, text) == pytest.approx(expected)
    assert video_filter.text_video_score(frames * 7, text * 0.1) == pytest.approx(expected)
    with pytest.raises(ValueError, match="do not match"):
        video_filter.text_video_score(frames, np.ones(3))


def test_threshold_keeps_scores_at_or_above_it():
    decisions = video_filter.decide({"a": 0.30, "b": 0.22, "c": 0.2199, "d": -0.5}, threshold=0.22)
    assert decisions == {"a": True, "b": True, "c": False, "d": False}


def test_frames_are_sampled_uniformly():
    assert list(video_filter.sample_frame_indices(16, 4)) == [2, 6, 10, 14]
    assert list(video_filter.sample_frame_indices(3, 8)) == [0, 1, 2]
    with pytest.raises(ValueError):
        video_filter.sample_frame_indices(0, 4)


class ColourClip:
    """A controlled 'CLIP' (ClipEncoder's interface): an image embeds as its mean RGB, a text as the
    colour word it names."""

    name = "colour"

    def encode_images(self, frames, normalize=False):
        return np.asarray(frames, np.float32).reshape(len(frames), -1, 3).mean(1)

    def encode_texts(self, texts, normalize=False):
        return np.stack([np.array(next(v for k, v in COLOURS.items() if k in t), np.float32) for t in texts])


def write_generated(out_dir, video_id, colour, text, num_frames=12):
    """A t2v-like output: a solid-colour MP4 and its metadata."""
    frames = np.zeros((num_frames, 32, 32, 3), np.uint8)
    frames[..., list(COLOURS).index(colour)] = 200
    media.write_mp4(out_dir / f"{video_id}.mp4", frames, fps=8)
    workers.atomic_write_json(out_dir / f"{video_id}.json", {
        "id": video_id, "video": f"{video_id}.mp4", "text": text, "num_frames": num_frames,
        "label": 1, "kind": "abnormal", "anomaly_class": "Arson"})


def test_step_keeps_matching_videos_and_records_rejected_scores(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    write_generated(videos, "match-red", "red", "a red fire truck")
    write_generated(videos, "match-blue", "blue", "a blue police car")
    write_generated(videos, "mismatch", "green", "a red fire truck")
    loads = []
    monkeypatch.setattr(video_filter, "load_clip", lambda settings: loads.append(settings) or ColourClip())

    summary = video_filter.run_filter(video_filter.FilterSettings(threshold=0.5, clip_model="colour"),
                                      videos_dir=str(videos), out_dir=str(tmp_path / "f"))
    rows = {r["id"]: r for r in workers.read_jsonl(tmp_path / "f" / "decisions.jsonl")}
    assert {k: r["kept"] for k, r in rows.items()} == {"match-red": True, "match-blue": True,
                                                       "mismatch": False}
    assert rows["match-red"]["score"] > 0.95 and rows["mismatch"]["score"] < 0.05
    assert rows["mismatch"]["threshold"] == 0.5 and rows["mismatch"]["path"].endswith("mismatch.mp4")
    assert (summary["kept"], summary["rejected"]) == (2, 1)
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["rejected"] == 1

    # A new threshold re-decides from the cached scores: no model is loaded again.
    summary = video_filter.run_filter(video_filter.FilterSettings(threshold=-1.0, clip_model="colour"),
                                      videos_dir=str(videos), out_dir=str(tmp_path / "f"))
    assert summary["kept"] == 3 and len(loads) == 1


def test_metadata_without_required_fields_is_named(tmp_path):
    workers.atomic_write_json(tmp_path / "x.json", {"id": "x", "video": "x.mp4"})
    with pytest.raises(ValueError, match=r"x.json.*'text'"):
        video_filter.generated_items(tmp_path)
    with pytest.raises(FileNotFoundError, match="no generated videos"):
        video_filter.generated_items(tmp_path / "empty")
