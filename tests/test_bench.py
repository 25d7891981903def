"""pavad-bench: config and batch layout, XLA FLOP counts, the matmul peak and the whole report."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import xla_flags
from pavad_jax import bench
from train_fixtures import write_easy_dataset

QUICK_PEAK = bench.matmul_peak  # the real one: test_matmul_peak_grows_until_a_call_is_long_enough times it


def test_batch_layout_matches_the_trainer():
    config = bench.bench_config("darm", 6, 16, 24, hidden=8, slots=4)
    assert (config.data.batch.normal, config.data.batch.abnormal, config.data.batch.pseudo_normal) == (3, 3, 3)
    assert config.loss.darm.domain_alignment and config.loss.darm.usage_update
    batches = bench.random_batches(config, jax.random.key(0), steps=2)
    assert batches["features"].shape == (2, 9, 16, 24)
    np.testing.assert_array_equal(batches["stream"][0], [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(batches["label"][1], [0, 0, 0, 1, 1, 1, 0, 0, 0])
    plain = bench.bench_config("urdmu", 6, 16, 24)
    assert plain.data.batch.pseudo_normal == 0 and not plain.loss.darm.domain_alignment
    with pytest.raises(ValueError, match="even"):
        bench.bench_config("urdmu", 5, 16, 24)
    with pytest.raises(ValueError, match="one of"):
        bench.bench_config("mil", 4, 16, 24)
    lap = bench.bench_config("lap", 4, 32, 16, crops=3)
    batch = bench.random_batches(lap, jax.random.key(0), 1)
    assert batch["features"].shape == (1, 4, 3, 32, 16) and batch["caption_embedding"].shape == (1, 4, 32, 768)


# The run is the same code for both models past bench_config; LAP's config and batches (crops,
# caption embeddings) are checked by default in test_batch_layout_matches_the_trainer.
@pytest.mark.parametrize("model", ["rtfm", pytest.param("lap", marks=pytest.mark.slow)])
def test_rtfm_and_lap_benchmarks_report_step_time_and_flops(model, monkeypatch):
    monkeypatch.setattr(bench, "matmul_peak", lambda: QUICK_PEAK(calls=1, min_seconds=0.0))  # timed below
    result = bench.run_benchmark(model, 2, 32, 16, steps=1, crops=2)
    assert result["model"] == model and result["crops"] == 2 and result["hidden"] is None
    assert result["train_step_ms"] > 0 and result["flops_per_step"] > 0 and result["achieved_flops_per_s"] > 0
    assert f"{model} on cpu" in bench.format_report(result)


def test_flops_come_from_xla_cost_analysis():
    a = jnp.ones((64, 32))
    b = jnp.ones((32, 16))
    compiled = jax.jit(jnp.dot).lower(a, b).compile()
    assert bench.flops_of(compiled) == pytest.approx(2 * 64 * 32 * 16, rel=0.01)


def test_matmul_peak_grows_until_a_call_is_long_enough():
    peak = bench.matmul_peak(calls=2, min_seconds=1e9, max_n=1024)  # never long enough: stops at max_n
    assert peak["n"] == 1024 and peak["flops_per_s"] == pytest.approx(2 * 1024**3 / peak["seconds"])
    quick = bench.matmul_peak(calls=2, min_seconds=0.0)
    assert quick["n"] == 512


def test_step_matmuls_finds_every_dot_with_its_repeat_count():
    def fn(x, w):
        y = jax.nn.relu(x @ w)  # one dot
        y = jax.jit(lambda a: a @ w.T)(y)  # one inside a nested jit
        return jax.lax.scan(lambda c, _: (c @ w, None), y, length=3)[0]  # three from the scan body

    x, w = jnp.ones((5, 4)), jnp.ones((4, 4))
    found = bench.step_matmuls(fn, x, w)
    assert len(found) == 5 and all(lhs.shape == (5, 4) and rhs.shape == (4, 4) for lhs, rhs, _ in found)
    timed = bench.bench_matmuls_only(found, steps=2)
    assert timed["matmul_count"] == 5 and timed["matmul_only_ms"] > 0
    assert timed["matmul_flops_per_step"] == pytest.approx(5 * 2 * 5 * 4 * 4, rel=0.01)


@pytest.mark.slow  # small form: test_single_device_benchmark_reports_every_figure_and_the_matmul_only_ceiling
def test_tiny_benchmark_reports_every_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "matmul_peak", lambda: QUICK_PEAK(calls=1, min_seconds=0.0))
    result = bench.run_benchmark("darm", 4, 32, 16, steps=2, members=2, hidden=8, slots=4, steps_per_dispatch=2)
    assert result["rows"] == 6 and result["steps_per_dispatch"] == 2
    for name in ("compile_s", "train_step_ms", "train_segments_per_s", "infer_segments_per_s", "flops_per_step",
                 "achieved_flops_per_s", "matmul_peak_flops_per_s", "fraction_of_peak"):
        assert result[name] > 0, name
    # 6 rows over the test's 8 CPU devices: data-parallel on 6, so the matmul-only figures are n/a.
    assert result["data_devices"] == 6 and result["matmul_only_ms"] is None
    assert result["train_segments_per_s"] == pytest.approx(6 * 32 / (result["train_step_ms"] / 1e3))
    assert result["fraction_of_peak"] == pytest.approx(result["achieved_flops_per_s"] / result["matmul_peak_flops_per_s"])
    # 1 member on one device, 2 on two: one member per device both times, so no per-member line
    # (the single-device CLI test below gets one).
    assert [(row["members"], row["devices"]) for row in result["sweep"]] == [(1, 1), (2, 2)]
    assert all(row["member_steps_per_s"] > 0 and row["memory_gb"] > 0 for row in result["sweep"])
    assert result["step_memory_gb"] > result["batch_gb"] > 0
    assert "note" in result["member_memory"]
    text = bench.format_report(result)
    assert "fraction_of_peak" in text and "2 members" in text and "matmuls only          n/a" in text
    assert "memory per member     n/a" in text
    skipped = bench.bench_sweep(bench.bench_config("urdmu", 2, 8, 8, hidden=8, slots=4), "1", steps=1, device_memory=1)
    assert "not run" in bench.format_report({**result, "sweep": skipped})
    json.dumps(result)  # JSON-able as --json writes it


def test_cli_help_and_bad_flags():
    help_text = subprocess.run([sys.executable, "-m", "pavad_jax.bench", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--members" in help_text.stdout and "matmul" in help_text.stdout
    bad = subprocess.run([sys.executable, "-m", "pavad_jax.bench", "--batch-size", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "even" in bad.stderr


def test_single_device_benchmark_reports_every_figure_and_the_matmul_only_ceiling(tmp_path):
    """The small form of test_tiny_benchmark_reports_every_figure, in one CLI run on one CPU device: DARM
    (B = 2, 3 rows, 2 steps a dispatch) timed once, with the matmul-only figures, a sweep
    of 1 and 3 members on the device (a line through the memory) and both input paths on a
    dataset. The multi-device branch (matmul-only n/a) runs in the full form only."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(None))  # one CPU device
    out = tmp_path / "bench.json"
    data = write_easy_dataset(tmp_path / "data")  # 16-d features, as --feature-dim
    run = subprocess.run([sys.executable, "-m", "pavad_jax.bench", "--model", "darm", "--batch-size", "2",
                          "--segments", "16", "--feature-dim", "16", "--hidden", "8", "--slots", "4", "--steps", "1",
                          "--steps-per-dispatch", "2", "--members", "1,3", "--data", str(data), "--json", str(out)],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["rows"] == 3 and result["steps_per_dispatch"] == 2 and result["data_devices"] == 1
    for name in ("compile_s", "train_step_ms", "train_segments_per_s", "infer_segments_per_s", "flops_per_step",
                 "achieved_flops_per_s", "matmul_peak_flops_per_s", "fraction_of_peak"):
        assert result[name] > 0, name
    assert result["train_segments_per_s"] == pytest.approx(3 * 16 / (result["train_step_ms"] / 1e3))
    assert result["fraction_of_peak"] == pytest.approx(result["achieved_flops_per_s"] / result["matmul_peak_flops_per_s"])
    assert result["matmul_count"] >= 30  # forward, input- and weight-gradient dots of every linear layer
    assert 0 < result["matmul_flops_per_step"] <= result["flops_per_step"]
    assert result["matmul_only_fraction_of_peak"] == pytest.approx(
        result["matmul_flops_per_step"] / (result["matmul_only_ms"] / 1e3) / result["matmul_peak_flops_per_s"])
    assert [(row["members"], row["devices"]) for row in result["sweep"]] == [(1, 1), (3, 1)]
    assert all(row["member_steps_per_s"] > 0 and row["memory_gb"] > 0 for row in result["sweep"])
    assert result["step_memory_gb"] > result["batch_gb"] > 0
    fit = result["member_memory"]
    assert fit["memory_per_member_gb"] > 0 and fit["members_fit_per_device"] > 0
    assert result["input_grain_batches_per_s"] > 0 and result["input_resident_batches_per_s"] > 0
    assert result["input_videos"] > 0 and result["input_resident_table_gb"] > 0
    text = run.stdout
    assert "fraction_of_peak" in text and "3 members" in text and "% of peak" in text and "members fit in" in text
    assert "matmuls only" in text and "train steps/s" in text and "grain" in text and "bottleneck" in text
    wrong = subprocess.run([sys.executable, "-m", "pavad_jax.bench", "--feature-dim", "32", "--hidden", "8",
                            "--slots", "4", "--segments", "16", "--batch-size", "2", "--steps", "1", "--data",
                            str(data)], capture_output=True, text=True, env=env)
    assert wrong.returncode == 2 and "16-d" in wrong.stderr and "--feature-dim" in wrong.stderr


def test_input_lines_name_the_bottleneck_and_a_table_over_the_budget():
    result = {"train_step_ms": 100.0, "input_data": "/d", "input_videos": 7, "input_grain_batches_per_s": 4.0,
              "input_resident_batches_per_s": None, "input_resident_table_gb": 13.2, "input_resident_budget_gb": 5.9,
              "input_table_dtype": "float32"}
    text = "\n".join(bench.input_lines(result))
    assert "train steps/s       10.00" in text and "grain               4.00 batches/s: the input is the bottleneck" in text
    assert "device-resident     n/a: its table (13.20 GiB) is over the budget of 5.90 GiB" in text
    assert "--table-dtype bfloat16 halves it" in text
    result |= {"input_grain_batches_per_s": 40.0, "input_resident_batches_per_s": 900.0}
    assert "40.00 batches/s: the step is the bottleneck" in "\n".join(bench.input_lines(result))


def test_members_that_fit_from_the_sweep_estimates():
    rows = [{"members": m, "devices": 1, "memory_gb": 0.5 + 0.25 * m} for m in (1, 2, 4)]
    fit = bench.members_that_fit(rows, memory_gb=10.0)
    assert fit["memory_per_member_gb"] == pytest.approx(0.25) and fit["shared_memory_gb"] == pytest.approx(0.5)
    assert fit["members_fit_per_device"] == 38  # (10 - 0.5) / 0.25
    assert "note" in bench.members_that_fit(rows[:1], 10.0)  # one point gives no line


def test_torch_baseline_serves_reference_steps_from_a_subprocess():
    with bench.TorchBaseline(batch_size=2, segments=8, feature_dim=16) as torch_step:
        assert torch_step.settings["batch_size"] == 2 and torch_step.settings["threads"] >= 1
        assert len(torch_step.run(2)) == 2 and len(torch_step.run(1)) == 1
    assert len(torch_step.step_s) == 3 and all(t > 0 for t in torch_step.step_s)
    assert torch_step.process.returncode == 0  # ended with its input


def test_torch_baseline_alternates_with_the_jax_step_dispatch_by_dispatch(monkeypatch):
    """run_benchmark with the torch baseline at tiny shapes (the reference's hidden 512 and 60 slots):
    two dispatches of two steps, each followed by two torch steps."""
    monkeypatch.setattr(bench, "matmul_peak", lambda: QUICK_PEAK(calls=1, min_seconds=0.0))
    monkeypatch.setattr(bench, "bench_matmuls_only", lambda matmuls, steps: {
        "matmul_count": len(matmuls), "matmul_flops_per_step": None, "matmul_only_ms": None})
    result = bench.run_benchmark("urdmu", 2, 8, 16, steps=2, steps_per_dispatch=2, torch_baseline_steps=2)
    torch = result["torch"]
    assert torch["pairs"] == 2 and len(torch["step_ms_all"]) == 2 and len(result["train_step_ms_all"]) == 2
    low, high = torch["ratio_quartiles"]
    assert low <= result["torch_over_jax"] == torch["median_ratio"] <= high
    assert "alternated with the JAX step, 2 pairs" in bench.format_report(result)


def test_torch_comparison_pairs_each_dispatch_with_the_torch_steps_after_it():
    # 2 steps per dispatch: torch's steps 0-1 follow dispatch 0, 2-3 dispatch 1, 4-5 dispatch 2.
    figures = bench.torch_comparison({"torch": "x", "threads": 2}, [0.2, 0.2, 0.3, 0.5, 0.1, 0.1],
                                     jax_step_ms=[100.0, 200.0, 50.0], k=2)
    assert figures["step_ms_all"] == pytest.approx([200.0, 400.0, 100.0])
    assert figures["median_ratio"] == pytest.approx(2.0) and figures["pairs"] == 3
    assert figures["step_ms"] == pytest.approx(200.0)


def test_member_counts_and_a_sweep_over_the_memory_is_not_run():
    assert bench.member_counts(8) == [1, 2, 4, 8] and bench.member_counts("6") == [1, 2, 4, 6]
    assert bench.member_counts("1,8,64") == [1, 8, 64]
    with pytest.raises(ValueError):
        bench.member_counts("0,4")
    config = bench.bench_config("urdmu", 2, 8, 8, hidden=8, slots=4)
    rows = bench.bench_sweep(config, "1,2", steps=1, device_memory=1)  # 1 byte: nothing fits
    assert [row["members"] for row in rows] == [1, 2]
    assert all("over" in row["skipped"] and row["memory_gb"] > 0 for row in rows)
