"""The launch scripts, as dry runs that print what they would run."""
import subprocess

import pytest

from conftest import REPO

TRAIN_ARGS = ["--config", "configs/ucf.py", "--workdir", "/runs/ucf"]


def dry_run(script: str, *args: str) -> str:
    out = subprocess.run(["bash", str(REPO / "launch" / script), *args, "--dry-run", "--", *TRAIN_ARGS],
                         capture_output=True, text=True, check=True)
    return out.stdout


def test_tpu_pod_runs_the_same_command_on_every_worker():
    out = dry_run("tpu_pod.sh", "--tpu", "pod-v4-32", "--zone", "us-central2-b")
    assert "gcloud compute tpus tpu-vm ssh pod-v4-32" in out
    assert "--worker=all" in out
    assert "pavad-train\\ --config\\ configs/ucf.py\\ --workdir\\ /runs/ucf" in out


def test_multi_gpu_pins_the_visible_devices():
    out = dry_run("multi_gpu.sh", "--gpus", "0,1,2,3")
    assert out.startswith("env ")
    assert "CUDA_VISIBLE_DEVICES=0\\,1\\,2\\,3" in out
    assert out.strip().endswith("pavad-train --config configs/ucf.py --workdir /runs/ucf")


def test_slurm_script_runs_one_task_per_node_and_asks_for_sigterm():
    out = dry_run("slurm.sh", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu")
    assert "#SBATCH --nodes=4" in out and "#SBATCH --ntasks-per-node=1" in out
    assert "#SBATCH --partition=gpu" in out
    assert "#SBATCH --signal=TERM@120" in out
    assert "srun pavad-train --config configs/ucf.py --workdir /runs/ucf" in out


@pytest.mark.parametrize("script", ["tpu_pod.sh", "multi_gpu.sh", "slurm.sh"])
def test_missing_train_arguments_is_an_error(script):
    result = subprocess.run(["bash", str(REPO / "launch" / script), "--tpu", "t", "--zone", "z"]
                            if script == "tpu_pod.sh" else ["bash", str(REPO / "launch" / script)],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "pavad-train arguments" in result.stderr
