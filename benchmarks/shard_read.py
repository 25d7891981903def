"""Shard-read benchmark: the same features read from a shard set and from plain .npy files.

Writes N random videos of shape (crops, T, D) both as a shard set and as one .npy file per
video, reads everything once to warm the page cache, then times reading every video (in a
shuffled order, as a training sampler does) from each, alternating the two, best of --repeats. Prints records/s
and MB/s for both and the shard/npy time ratio (the goal is <= 2).

  python benchmarks/shard_read.py                          # UCF-like records: 10 crops x 128 x 1024
  python benchmarks/shard_read.py --crops 1 --t 32 --videos 2000   # many small records
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile
import time

import numpy as np
from tqdm import tqdm

from pavad_jax import shards

# wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine, but blind to
# time spent waiting, e.g. on page faults that a VM's hypervisor serves).
CLOCKS = ("wall", "cpu")


def make_videos(args) -> list[shards.VideoRecord]:
    """Random non-negative features, one record per video."""
    rng = np.random.default_rng(0)
    return [
        shards.VideoRecord(id=f"video_{i:05d}", features=rng.random((args.crops, args.t, args.dim), dtype=np.float32)
                           .astype(args.dtype), label=0, source="real", stream="normal", anomaly_class="normal",
                           num_frames=args.t * 16)
        for i in tqdm(range(args.videos), desc="make", unit="video")
    ]


def time_reads(read, order) -> tuple[float, float]:
    """(wall, CPU) seconds to read every index in `order` once; touches each array so lazy reads count."""
    wall, cpu = time.perf_counter(), time.process_time()
    checksum = 0.0
    for i in order:
        features = read(i)
        checksum += float(features[0, 0, 0])
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=64, help="number of videos (records)")
    parser.add_argument("--crops", type=int, default=10, help="crops per video")
    parser.add_argument("--t", type=int, default=128, help="segments per video")
    parser.add_argument("--dim", type=int, default=1024, help="feature dimension D")
    parser.add_argument("--dtype", default="float16", choices=shards.DTYPES, help="stored dtype (both formats)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the best is reported")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    args = parser.parse_args(argv)

    scratch = pathlib.Path(args.dir) if args.dir else pathlib.Path(tempfile.mkdtemp(prefix="shard_read_"))
    try:
        videos = make_videos(args)
        shards.write_shard_set(scratch / "shards", videos, dtype=args.dtype, overwrite=True)
        (scratch / "npy").mkdir(parents=True, exist_ok=True)
        paths = []
        for video in tqdm(videos, desc="write npy", unit="video"):
            paths.append(scratch / "npy" / f"{video.id}.npy")
            np.save(paths[-1], video.features)
        megabytes = sum(v.features.nbytes for v in videos) / 1e6
        del videos

        data = shards.ShardSet(scratch / "shards")
        readers = {"shards": lambda i: data[i].features, "npy": lambda i: np.load(paths[i])}
        order = np.random.default_rng(1).permutation(len(paths))
        for read in readers.values():  # warm the page cache and open the readers
            time_reads(read, order)
        # Alternate the two so that load from other processes hits both alike; keep each one's best.
        best = {(name, clock): float("inf") for name in readers for clock in CLOCKS}
        for _ in tqdm(range(args.repeats), desc="timed passes", unit="pass"):
            for name, read in readers.items():
                for clock, seconds in zip(CLOCKS, time_reads(read, order)):
                    best[name, clock] = min(best[name, clock], seconds)
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)

    result = {"videos": args.videos, "shape": [args.crops, args.t, args.dim], "dtype": args.dtype,
              "megabytes": megabytes}
    print(f"{args.videos} videos of {args.crops}x{args.t}x{args.dim} {args.dtype} ({megabytes:.1f} MB), "
          f"warm cache, best of {args.repeats}:")
    for clock in CLOCKS:
        for name in readers:
            seconds = best[name, clock]
            result[f"{name}_{clock}_records_per_s"] = args.videos / seconds
            result[f"{name}_{clock}_mb_per_s"] = megabytes / seconds
            print(f"  {clock:<4} {name:<7} {args.videos / seconds:10.1f} records/s  {megabytes / seconds:9.1f} MB/s")
        ratio = result[f"shards_over_npy_{clock}"] = best["shards", clock] / best["npy", clock]
        print(f"  {clock:<4} shards take {ratio:.2f}x the time of np.load "
              f"({'within' if ratio <= 2 else 'OVER'} the 2x goal)")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
