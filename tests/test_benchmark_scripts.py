"""The benchmark scripts of benchmarks/ in their small forms: they run, and what they compare agrees.

The full forms (UCF-Crime's shapes, an accelerator) print the README's figures; these keep the
scripts from rotting between the runs that need a quiet machine or a GPU.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import xla_flags

REPO = pathlib.Path(__file__).resolve().parent.parent


def run(command: list[str]) -> str:
    """Run a benchmark as a user would (one CPU device); its stdout."""
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": xla_flags(None)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_ucf_eval_small_scores_like_the_torch_loop_and_reports_both_sides(tmp_path):
    out = tmp_path / "figures.json"
    printed = run([sys.executable, "benchmarks/ucf_eval.py", "--size", "small", "--work", str(tmp_path),
                   "--json", str(out)])
    figures = json.loads(out.read_text())
    # pavad-eval (packed rows, crop chunks, a converted checkpoint) against the PyTorch
    # re-implementation scoring one crop per forward, on the same features and weights.
    assert figures["max_score_diff"] <= 1e-5 and figures["auc_diff"] <= 1e-5
    assert 0.0 < figures["pavad_eval"]["auc"] < 1.0
    for side in ("pavad_eval", "torch_loop"):
        assert figures[side]["seconds"] > 0 and 0 < figures[side]["peak_rss_gb"] < 4
    assert figures["time_ratio"] == figures["pavad_eval"]["seconds"] / figures["torch_loop"]["seconds"]
    assert "pavad-eval / torch time" in printed


# ~70 s (five processes, each compiling its programs). Its parts run by default: pavad-bench's
# reports (test_bench.py), the evaluation benchmark (above) and the torch step (test_bench.py).
@pytest.mark.slow
def test_accelerator_script_runs_its_tiny_form_on_cpu_and_summarises_every_figure(tmp_path):
    printed = run(["bash", "benchmarks/accelerator.sh", "--tiny", "--out", str(tmp_path)])
    for name in ("step_float32", "step_bfloat16", "sweep", "ucf_eval", "torch_step"):
        assert (tmp_path / f"{name}.json").is_file(), name
    summary = printed[printed.index("== summary"):]
    for line in ("train step float32", "train step bfloat16", "torch step", "sweep   4 members",
                 "members that fit", "UCF-shaped eval"):
        assert line in summary, line
    assert json.loads((tmp_path / "step_bfloat16.json").read_text())["compute_dtype"] == "bfloat16"
