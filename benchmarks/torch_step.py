"""The PyTorch re-implementation's UR-DMU train step (fwd + loss + bwd + Adam), timed.

  python benchmarks/torch_step.py --batch-size 8 --segments 200 --feature-dim 1024 --steps 20
  python benchmarks/torch_step.py ... --json out.json

The model is tests/urdmu_torch_reference.py (UR-DMU's `WSAD` written from its description),
trained as the reference trains it: B/2 normal + B/2 abnormal rows of random features, its
loss (`ad_loss`), torch.optim.Adam (lr 1e-4, weight decay 5e-5), dropout on, torch threads =
CPU cores unless --threads says otherwise. Prints the median step time of --steps timed steps
after two warm-up steps. `pavad-bench --torch-baseline` runs this file in a subprocess with
--serve and alternates its steps with the JAX step's, so both are timed under the same load of
the machine; pavad_jax itself never imports torch.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def build_torch_step(batch_size: int, segments: int, feature_dim: int, *, threads: int | None = None,
                     device: str = "cpu", seed: int = 0) -> tuple:
    """(step, settings): step() runs one reference train step, warmed up, and returns its wall seconds."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from urdmu_torch_reference import WSAD, ad_loss

    torch.set_num_threads(threads or os.cpu_count())
    torch.manual_seed(seed)
    model = WSAD(feature_dim).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=5e-5)
    half = batch_size // 2
    features = torch.rand(batch_size, segments, feature_dim, device=device)
    label = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)

    def step() -> float:
        start = time.perf_counter()
        result = model(features)
        loss = ad_loss(result, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()
        loss.item()
        return time.perf_counter() - start

    for _ in range(2):
        step()
    return step, {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
                  "batch_size": batch_size, "segments": segments, "feature_dim": feature_dim}


def time_torch_step(batch_size: int, segments: int, feature_dim: int, steps: int, *, threads: int | None = None,
                    device: str = "cpu", seed: int = 0) -> dict:
    """Median wall time of one reference train step, and the settings it ran with."""
    step, settings = build_torch_step(batch_size, segments, feature_dim, threads=threads, device=device, seed=seed)
    times = [step() for _ in range(steps)]
    return settings | {"steps": steps, "train_step_ms": 1e3 * statistics.median(times),
                       "train_step_ms_all": [1e3 * t for t in times]}


def serve(batch_size: int, segments: int, feature_dim: int, *, threads: int | None = None, device: str = "cpu") -> None:
    """Steps on request, for timing interleaved with another process's: prints the settings as one
    JSON line once warmed up, then for each line "N" on stdin runs N steps and prints their wall
    seconds as a JSON list; ends at end of input."""
    step, settings = build_torch_step(batch_size, segments, feature_dim, threads=threads, device=device)
    print(json.dumps(settings), flush=True)
    for line in sys.stdin:
        print(json.dumps([step() for _ in range(int(line))]), flush=True)


def main(argv=None) -> None:
    from pavad_jax import host_memory  # pylint: disable=import-outside-toplevel

    host_memory.reuse_freed_memory()  # the allocator settings of pavad-bench's own process: steps against steps
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="B: B/2 normal + B/2 abnormal rows (default 8)")
    parser.add_argument("--segments", type=int, default=200, help="T (default 200)")
    parser.add_argument("--feature-dim", type=int, default=1024, help="D (default 1024)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps, median reported (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: CPU cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the figures here")
    parser.add_argument("--serve", action="store_true",
                        help="time steps on request (stdin: a step count per line; stdout: their seconds as "
                             "JSON): pavad-bench --torch-baseline interleaves them with the JAX step's")
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.batch_size % 2:
        parser.error(f"--batch-size must be even and >= 2, got {args.batch_size}")
    if args.serve:
        serve(args.batch_size, args.segments, args.feature_dim, threads=args.threads, device=args.device)
        return
    result = time_torch_step(args.batch_size, args.segments, args.feature_dim, args.steps, threads=args.threads,
                             device=args.device)
    print(f"torch {result['torch']} UR-DMU step on {result['device']} ({result['threads']} threads), "
          f"B={args.batch_size}, T={args.segments}, D={args.feature_dim}: {result['train_step_ms']:.1f} ms median")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
