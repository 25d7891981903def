"""Full UCF-Crime-shaped evaluation: pavad-eval against a one-crop-per-forward PyTorch loop, side by side.

  python benchmarks/ucf_eval.py                      # data and checkpoint under /tmp/pavad_ucf_eval
  python benchmarks/ucf_eval.py --work DIR --json out.json
  python benchmarks/ucf_eval.py --size small --work /tmp/tiny     # seconds: the same steps at D = 64 (a check)

1. The test split of `pavad-data synthetic --size ucf` (290 videos at UCF-Crime's real segment
   counts, 69,355 segments, 10 crops, D = 1024, float16), written once and reused.
2. A UR-DMU checkpoint: the PyTorch re-implementation of tests/urdmu_torch_reference.py with
   random weights, saved as a state dict and converted by `pavad-import-urdmu`.
3. `pavad-eval` on it, as a subprocess; and the reference's test loop (the same weights in
   PyTorch, eval mode, one crop per forward, scores averaged over crops, torch threads = CPU
   cores) over the same features, also a subprocess. For each: wall time and peak RSS (the
   child's ru_maxrss), and the frame-level AUC.

Prints both figures, their ratio and the largest score difference. The issue's acceptance:
pavad-eval's peak RSS under 4 GiB, its time at most half the loop's, AUCs equal within 1e-5.
The machine may be shared: `uptime` is printed before and after; run it when the machine is idle.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent


def run_measured(command: list[str], log: pathlib.Path) -> dict:
    """Run `command`, output to `log`; its wall seconds and peak RSS (GiB) from wait4's rusage."""
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {code}; see {log}:\n" + log.read_text()[-3000:])
    return {"seconds": seconds, "peak_rss_gb": usage.ru_maxrss / 2**20}


def prepare(work: pathlib.Path, size: str, seed: int) -> tuple[pathlib.Path, pathlib.Path]:
    """(dataset folder, pavad-eval workdir) under `work`, built when missing."""
    data = work / size
    if subprocess.call([sys.executable, "-m", "pavad_jax.data.cli", "synthetic", "--size", size, "--splits", "test",
                        "--output", str(data)], cwd=REPO):
        raise SystemExit(f"pavad-data synthetic --size {size} failed")
    run = work / f"run-{size}"
    checkpoint = work / f"urdmu_random_{size}.pth"
    if not (run / "best").is_dir():
        import torch

        from pavad_jax.shards import ShardSet

        sys.path.insert(0, str(REPO / "tests"))
        from urdmu_torch_reference import WSAD

        torch.manual_seed(seed)
        torch.save(WSAD(ShardSet(data / "test").feature_dim).state_dict(), checkpoint)
        if subprocess.call([sys.executable, "-m", "pavad_jax.import_urdmu", str(checkpoint), "--output",
                            str(run / "best")], cwd=REPO):
            raise SystemExit("pavad-import-urdmu failed")
        from pavad_jax.checkpoint import read_config
        from pavad_jax.config_base import base_config

        config = base_config()
        config.model = read_config(run / "best").model
        config.data.dir = str(data)
        (run / "config.json").write_text(config.to_json(indent=1))
    return data, run


def torch_loop(data: pathlib.Path, checkpoint: pathlib.Path, out: pathlib.Path) -> None:
    """The reference's test loop: every crop of every test video through the model alone."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from urdmu_torch_reference import WSAD
    from pavad_jax.shards import ShardSet

    torch.set_num_threads(os.cpu_count())
    shards = ShardSet(data / "test")
    model = WSAD(shards.feature_dim)
    model.load_state_dict(torch.load(checkpoint))
    model.eval()
    scores = {}
    with torch.no_grad():
        for i in range(len(shards)):
            record = shards[i]
            crops = [model(torch.from_numpy(crop.astype(np.float32))[None])["frame"][0] for crop in record.features]
            scores[record.id] = torch.stack(crops).mean(0).numpy()
    np.savez(out, **scores)


def auc_of(scores: dict, data: pathlib.Path) -> float:
    from pavad_jax import metrics
    from pavad_jax.shards import ShardSet, aligned_frame_labels

    shards = ShardSet(data / "test", verify=False)
    records = [shards[i] for i in range(len(shards))]
    labels = [aligned_frame_labels(r) for r in records]
    return metrics.video_metrics([scores[r.id] for r in records], labels)["auc"]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/pavad_ucf_eval"),
                        help="folder for the data set, the checkpoint and the outputs (reused between runs)")
    parser.add_argument("--size", default="ucf", choices=("ucf", "small"),
                        help="ucf (default): UCF-Crime's shapes; small: the tiny synthetic test set (a check)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random UR-DMU weights")
    parser.add_argument("--skip-torch", action="store_true", help="time pavad-eval only")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the figures here")
    parser.add_argument("--torch-loop", nargs=3, metavar=("DATA", "CHECKPOINT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_loop:  # the child process of the PyTorch side
        torch_loop(*map(pathlib.Path, args.torch_loop))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    data, run = prepare(args.work, args.size, args.seed)
    result = {"uptime_before": uptime()}
    print(result["uptime_before"], flush=True)
    jax_side = run_measured([sys.executable, "-m", "pavad_jax.evaluate", "--workdir", str(run), "--videos", "0"],
                            args.work / "pavad_eval.log")
    metrics = json.loads((run / "eval" / "best" / "metrics.json").read_text())
    jax_scores = dict(np.load(run / "eval" / "best" / "scores.npz"))
    result["pavad_eval"] = jax_side | {"auc": metrics["auc"], "in_process_seconds": metrics["eval_seconds"],
                                       "segments_per_s": metrics["segments_per_s"]}
    print(f"pavad-eval:  {jax_side['seconds']:7.1f} s  peak RSS {jax_side['peak_rss_gb']:.2f} GiB  "
          f"AUC {metrics['auc']:.6f}  (scoring {metrics['eval_seconds']:.1f} s, "
          f"{metrics['segments_per_s']:.0f} segments/s)", flush=True)
    if not args.skip_torch:
        torch_out = args.work / "torch_scores.npz"
        torch_side = run_measured([sys.executable, __file__, "--torch-loop", str(data),
                                   str(args.work / f"urdmu_random_{args.size}.pth"), str(torch_out)],
                                  args.work / "torch_loop.log")
        torch_scores = dict(np.load(torch_out))
        torch_auc = auc_of(torch_scores, data)
        diff = max(float(np.abs(jax_scores[k] - torch_scores[k]).max()) for k in torch_scores)
        result["torch_loop"] = torch_side | {"auc": torch_auc}
        result |= {"time_ratio": jax_side["seconds"] / torch_side["seconds"], "max_score_diff": diff,
                   "auc_diff": abs(metrics["auc"] - torch_auc)}
        print(f"torch loop:  {torch_side['seconds']:7.1f} s  peak RSS {torch_side['peak_rss_gb']:.2f} GiB  "
              f"AUC {torch_auc:.6f}")
        print(f"pavad-eval / torch time {result['time_ratio']:.2f} (target <= 0.5); peak RSS "
              f"{jax_side['peak_rss_gb']:.2f} GiB (target < 4); |AUC diff| {result['auc_diff']:.2e}, "
              f"largest segment-score diff {diff:.2e} (target <= 1e-5)")
    result["uptime_after"] = uptime()
    print(result["uptime_after"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
