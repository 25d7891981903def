"""A vmapped sweep against the same members trained one after another, side by side in one run.

  python benchmarks/sweep_vs_sequential.py                       # configs/sweeps/synthetic_lambda.py:runlocal
  python benchmarks/sweep_vs_sequential.py --config configs/sweeps/synthetic_lambda.py:runlocal --json out.json

Both sides include compilation, evaluation and checkpoints: the sweep is `run_sweep` (one
program for all members), the sequential side is `train_and_evaluate` (what pavad-train runs)
once per member with the member's standalone config. The synthetic data set is built before
either clock starts. Prints both wall times and their ratio (the issue asks for < 0.5).
The machine may be shared: the two sides run back to back, `--repeats` alternates them.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

from pavad_jax import atomic

REPO = pathlib.Path(__file__).resolve().parent.parent


def parse_config_arg(spec: str):
    """'path.py:arg' -> the sweep config."""
    from pavad_jax.config_loader import load_config_file

    path, _, arg = spec.partition(":")
    return load_config_file(REPO / path if not pathlib.Path(path).is_absolute() else path, arg or None)


def time_sweep(config, workdir: pathlib.Path) -> float:
    from pavad_jax import sweep

    sweep._PROGRAMS.clear()  # compile afresh, as a new pavad-sweep process would
    start = time.perf_counter()
    rows = sweep.run_sweep(config, workdir)
    elapsed = time.perf_counter() - start
    assert len(rows) == len(sweep.expand_members(config.sweep)), "the sweep did not finish"
    return elapsed


def time_sequential(config, workdir: pathlib.Path) -> float:
    from pavad_jax import sweep, train

    base = sweep.base_of(config)
    members = sweep.expand_members(config.sweep)
    start = time.perf_counter()
    for i, member in enumerate(members):
        train.train_and_evaluate(sweep.member_config(base, member), workdir / f"member{i}")
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sweeps/synthetic_lambda.py:runlocal",
                        help="sweep config (path relative to the repository, optional :arg)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate sequential/sweep this many times")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the timings here")
    args = parser.parse_args(argv)

    from pavad_jax import sweep, train

    config = parse_config_arg(args.config)
    train.resolve_data_dir(sweep.base_of(config))  # build the synthetic data before the clocks start
    members = len(sweep.expand_members(config.sweep))
    timings = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            sequential = time_sequential(config, tmp / "sequential")
            vmapped = time_sweep(config, tmp / "sweep")
        timings.append({"sequential_s": sequential, "sweep_s": vmapped, "ratio": vmapped / sequential})
        print(f"[{repeat + 1}/{args.repeats}] {members} members: sequential {sequential:.1f} s, "
              f"sweep {vmapped:.1f} s, ratio sweep/sequential = {vmapped / sequential:.3f}", flush=True)
    result = {"config": args.config, "members": members, "runs": timings,
              "ratio_median": sorted(t["ratio"] for t in timings)[len(timings) // 2]}
    print(f"sweep / sequential (median of {len(timings)}): {result['ratio_median']:.3f}")
    if args.json:
        atomic.write_json(args.json, result, indent=2)


if __name__ == "__main__":
    sys.exit(main())
