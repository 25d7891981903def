"""pavad-data: look at, check, import and generate feature-shard datasets.

  pavad-data inspect DIR [--json] [--no-norms]
      counts per stream / label / class / source, T distribution, mean segment L2 norm per
      stream (PA-VAD Table 1's statistic), the feature extractor and protocol of each shard set
      (a warning when they are mixed; an error when feature dims differ). DIR: a dataset
      (train/ and test/), a shard set or a folder of shard sets.
  pavad-data validate DIR
      decode every record of every split; exit 1 listing each problem (file, record, field),
      including a folder whose .array_record files have no manifest.json.
  pavad-data import urdmu --list UCF_Test.list --features DIR --dataset ucf --gt gt-ucf.npy --output OUT
  pavad-data import rtfm --list shanghai-i3d-test-10crop.list --features DIR --dataset sht \\
      --gt test_frame_mask/ --output OUT
  pavad-data import folder --features DIR --labels labels.csv --output OUT
  pavad-data synthetic --output DIR [--size small|xd_small|default|ucf] [--seed N] [--splits test]

See docs/data.md for the format and the layouts.
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys

import numpy as np
from tqdm import tqdm

from pavad_jax import shards
from pavad_jax.data import importers, synthetic

SPLITS = ("train", "test")
_T_BINS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


# ----------------------------------------------------------------------------- inspect


def _groups(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """{name: folder} to report on: each split of a dataset, else the folder itself."""
    splits = {s: path / s for s in SPLITS if (path / s).is_dir()}
    if splits and not (path / shards.MANIFEST).exists():
        return splits
    return {path.name or str(path): path}


def _t_histogram(ts: list[int]) -> list[dict]:
    """Counts of videos per T range [lo, hi) over power-of-two-ish bins, empty bins dropped."""
    edges = list(_T_BINS) + [max(max(ts) + 1, _T_BINS[-1] + 1)]
    counts = np.histogram(ts, bins=edges)[0]
    return [{"lo": int(lo), "hi": int(hi), "count": int(c)} for lo, hi, c in zip(edges[:-1], edges[1:], counts) if c]


def _mean_norms(data: shards.ShardSet, desc: str) -> dict[str, float]:
    """Mean segment L2 norm per stream, pooled over every segment and crop (reads all features)."""
    sums: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for i in tqdm(range(len(data)), desc=f"norms {desc}", unit="video", leave=False):
        entry = data.entries[i]
        norms = np.linalg.norm(data[i].features.astype(np.float32), axis=-1)
        key = f"{entry['source']}/{entry['stream']}"
        sums[key][0] += float(norms.sum())
        sums[key][1] += norms.size
    return {k: total / n for k, (total, n) in sorted(sums.items())}


def summarize(path: pathlib.Path, *, norms: bool = True, verify: bool = True) -> dict:
    """Statistics of one shard set or folder of shard sets, as a JSON-able dict."""
    data = shards.ShardSet(path, verify=verify)
    entries = data.entries
    count = lambda key: dict(sorted(collections.Counter(str(e[key]) for e in entries).items()))
    ts = [e["T"] for e in entries]
    summary = {
        "path": str(path),
        "shard_sets": len(data.set_dirs),
        "records": len(entries),
        "feature_dim": data.feature_dim,
        "dtype": data.dtype.name,
        "provenance": dict(sorted(collections.Counter(
            f"{p['feature_extractor']} / {p['protocol']}" for p in data.provenance).items())),
        "crops": sorted({e["crops"] for e in entries}),
        "bytes": sum(f.stat().st_size for f, _ in data._files),
        "stream": count("stream"),
        "source": count("source"),
        "source_stream": dict(sorted(collections.Counter(f"{e['source']}/{e['stream']}" for e in entries).items())),
        "label": count("label"),
        "anomaly_class": count("anomaly_class"),
        "with_frame_labels": sum(bool(e.get("has_frame_labels")) for e in entries),
        "T": {"min": int(min(ts)), "median": float(np.median(ts)), "max": int(max(ts)),
              "histogram": _t_histogram(ts)} if ts else None,
    }
    if norms:
        summary["mean_segment_norm"] = _mean_norms(data, path.name)
    return summary


def _format_counts(title: str, counts: dict) -> list[str]:
    width = max(len(k) for k in counts) if counts else 0
    return [f"  {title}:"] + [f"    {k:<{width}}  {v:>7}" for k, v in counts.items()]


def format_summary(name: str, s: dict) -> str:
    """A readable multi-line table of one summary."""
    lines = [f"== {name}: {s['records']} videos in {s['shard_sets']} shard set(s), D={s['feature_dim']} "
             f"{s['dtype']}, crops {s['crops']}, {s['bytes'] / 2**20:.1f} MiB  ({s['path']})"]
    lines += _format_counts("feature extractor / protocol (shard sets)", s["provenance"])
    lines += _format_counts("source/stream", s["source_stream"])
    lines += _format_counts("label", s["label"])
    lines += _format_counts("anomaly class", s["anomaly_class"])
    lines.append(f"  with frame labels: {s['with_frame_labels']}")
    if s["T"]:
        t = s["T"]
        lines.append(f"  T (segments): min {t['min']}  median {t['median']:g}  max {t['max']}")
        peak = max(b["count"] for b in t["histogram"])
        for b in t["histogram"]:
            bar = "#" * max(1, round(30 * b["count"] / peak))
            lines.append(f"    [{b['lo']:>5}, {b['hi']:>5})  {b['count']:>6}  {bar}")
    if "mean_segment_norm" in s:
        lines.append("  mean segment L2 norm (source/stream):")
        lines += [f"    {k:<22} {v:8.2f}" for k, v in s["mean_segment_norm"].items()]
    return "\n".join(lines)


def cmd_inspect(args) -> int:
    path = pathlib.Path(args.dir)
    # One check over every shard set of the dataset (train and test alike): warn once, stop on mixed D.
    for warning in shards.check_provenance(shards.find_shard_sets(path), root=path):
        print(f"pavad-data inspect: warning: {warning}", file=sys.stderr)
    report = {name: summarize(p, norms=not args.no_norms, verify=not args.no_verify)
              for name, p in _groups(path).items()}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("\n\n".join(format_summary(name, s) for name, s in report.items()))
    return 0


# ----------------------------------------------------------------------------- validate


def cmd_validate(args) -> int:
    """Validate each split of a dataset (train/, test/) on its own, else the folder itself."""
    progress = lambda files: tqdm(files, desc="validate", unit="file", leave=False)
    groups = _groups(pathlib.Path(args.dir))
    problems = [problem for folder in groups.values() for problem in shards.validate(folder, progress=progress)]
    if problems:
        for problem in problems:
            print(problem)
        print(f"INVALID: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    sets = {name: shards.find_shard_sets(folder) for name, folder in groups.items()}
    records = {name: sum(shards.load_manifest(d)["num_records"] for d in found) for name, found in sets.items()}
    per_split = f" ({', '.join(f'{name} {n}' for name, n in records.items())})" if len(groups) > 1 else ""
    print(f"OK: {sum(records.values())} records in {sum(map(len, sets.values()))} shard set(s) under {args.dir}"
          f"{per_split}")
    return 0


# ----------------------------------------------------------------------------- import


def _write_kw(args) -> dict:
    return dict(dtype=args.dtype, records_per_file=args.records_per_file, overwrite=args.overwrite,
                feature_extractor=args.feature_extractor, protocol=args.protocol)


def cmd_import(args) -> int:
    if args.layout == "folder":
        manifest = importers.import_folder(args.features, args.labels, args.output, gt=args.gt,
                                           source=args.source, **_write_kw(args))
    else:
        classes = importers.read_sht_classes(args.relabel) if args.relabel else None
        function = importers.import_urdmu if args.layout == "urdmu" else importers.import_rtfm
        manifest = function(args.list, args.features, args.output, dataset=args.dataset, gt=args.gt,
                            num_abnormal=args.num_abnormal, sht_classes=classes, source=args.source,
                            **_write_kw(args))
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"]["stream"].items())
    print(f"wrote {manifest['num_records']} videos ({counts}) D={manifest['feature_dim']} to {args.output}")
    return 0


# ----------------------------------------------------------------------------- synthetic


def cmd_synthetic(args) -> int:
    built = synthetic.build(args.output, args.size, args.seed, force=args.force, splits=args.splits)
    verb = "generated" if built else "already valid, kept"
    info = json.loads((pathlib.Path(args.output) / synthetic.INFO_FILE).read_text())
    print(f"{verb}: synthetic {args.size} seed {args.seed} ({', '.join(args.splits)}) at {args.output}")
    if "mean_segment_norm" in info:
        norms = ", ".join(f"{k} {v:.2f}" for k, v in info["mean_segment_norm"].items())
        print(f"  mean segment norms: {norms}")
    else:
        print(f"  {info['purpose']}; videos {info['videos']}, segments {info['segments']}")
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pavad-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="counts, T distribution and feature norms of a dataset")
    p.add_argument("dir", help="a dataset (train/, test/), a shard set or a folder of shard sets")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    p.add_argument("--no-norms", action="store_true", help="skip the feature norms (reads no features)")
    p.add_argument("--no-verify", action="store_true", help="skip the per-file sha256 check")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("validate", help="check every file and record; exit 1 naming each problem")
    p.add_argument("dir", help="a dataset, a shard set or a folder of shard sets")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("import", help="convert a public feature release to a shard set")
    layouts = p.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    for layout, what in (("urdmu", "per-crop (T, D) files `<name>__<k>.npy`, one list line per crop"),
                         ("rtfm", "one (T, crops, D) file `<name>_i3d.npy` per video, one list line each")):
        q = layouts.add_parser(layout, help=what, description=f"{layout} layout: {what}.")
        q.add_argument("--list", required=True, help="the release's .list file (abnormal videos first)")
        q.add_argument("--dataset", required=True, choices=importers.DATASETS,
                       help="how labels and classes follow from names (ucf, xd) or counts (sht)")
        q.add_argument("--num-abnormal", type=int, default=None,
                       help="the first N videos are abnormal (default: from names; SHT lists from README counts)")
        q.add_argument("--relabel", default=None, help="SHT relabel.list giving the class of abnormal videos")
    q = layouts.add_parser("folder", help="plain (T, D) or (crops, T, D) .npy files plus a labels CSV")
    q.add_argument("--labels", required=True,
                   help="CSV with columns id or file, label (0/1), optional class, stream, source")
    for q in layouts.choices.values():
        q.add_argument("--features", required=True, help="folder holding the .npy feature files (searched recursively)")
        q.add_argument("--output", required=True, help="shard set to write (e.g. DATASET/test)")
        q.add_argument("--gt", default=None,
                       help="frame labels of test videos: concatenated .npy in list order, per-video .npy "
                            "folder, dict .pickle, or temporal annotation .txt")
        q.add_argument("--source", default="real", choices=shards.SOURCES, help="source of every video")
        q.add_argument("--dtype", default="float16", choices=shards.DTYPES, help="stored feature dtype")
        q.add_argument("--records-per-file", type=int, default=64, help="videos per ArrayRecord file")
        q.add_argument("--feature-extractor", default=None,
                       help="the network that made the features, recorded in the manifest (e.g. i3d-kinetics400 for "
                            "the UR-DMU/UCF-Crime 1024-d release; docs/features.md); default: unknown")
        q.add_argument("--protocol", default=None,
                       help="its frame preprocessing, recorded in the manifest (urdmu for the UR-DMU release, as "
                            "`pavad-gen extract --protocol urdmu`); default: unknown")
        q.add_argument("--overwrite", action="store_true", help="replace a shard set already at --output")
        q.set_defaults(run=cmd_import)

    p = sub.add_parser("synthetic", help="generate the embedded synthetic benchmark (deterministic)")
    p.add_argument("--output", required=True, help="dataset folder to create (gets train/ and test/)")
    p.add_argument("--size", default="default", choices=synthetic.SIZE_NAMES,
                   help="small: D=64, seconds, for tests; xd_small: D=64, 5 crops, real abnormal training "
                        "videos (configs/xd.py:runlocal); default: D=1024, UR-DMU-size; ucf: random features "
                        "with UCF-Crime's real shapes (290 test videos at their real lengths, 1610 training "
                        "videos, 10 crops, D=1024, float16: ~1.4 + ~8 GB), for speed and memory only")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole dataset")
    p.add_argument("--force", action="store_true", help="regenerate even if a valid copy is there")
    p.add_argument("--splits", nargs="+", default=list(synthetic.SPLITS), choices=synthetic.SPLITS,
                   help="which splits to write (default: train test)")
    p.set_defaults(run=cmd_synthetic)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (shards.ShardError, importers.ImporterError, FileNotFoundError, FileExistsError) as e:
        print(f"pavad-data {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
