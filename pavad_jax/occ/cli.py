"""`pavad-occ`: Rai et al.'s one-class detector, prepare -> train -> eval.

    pavad-occ train --config configs/occ/tiny.py --workdir /tmp/occ_tiny
    pavad-occ eval --workdir /tmp/occ_tiny

`prepare` (run by `train` when WORKDIR/data is not ready) writes the spec (the config's data
and generation sections) to WORKDIR/data/spec.json and runs `python -m generation.rai.cli
prepare` in a subprocess: the PyTorch side makes the pseudo-anomalies, this process never
imports torch. Override config fields with --config.section.field=value.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import ml_collections

from pavad_jax import atomic, host_memory, plots
from pavad_jax.config_loader import ConfigError, load_config

PROG = "pavad-occ"


def workdir_config(args) -> ml_collections.ConfigDict:
    """The run's config: from --config (saved to WORKDIR/config.json) or from WORKDIR/config.json."""
    workdir = pathlib.Path(args.workdir)
    saved = workdir / "config.json"
    if args.config:
        try:
            config = load_config(args.config, args.overrides, command=f"{PROG} {args.command}", expected="occ")
        except ConfigError as e:
            raise SystemExit(f"{PROG}: {e}") from None
        atomic.write_json(saved, json.loads(config.to_json()), indent=2)
        return config
    if args.overrides:
        raise SystemExit(f"{PROG}: --config.* overrides need --config")
    if not saved.is_file():
        raise SystemExit(f"{PROG}: {saved} is missing: pass --config (train writes it)")
    return ml_collections.ConfigDict(json.loads(saved.read_text()))


def generation_spec(config: ml_collections.ConfigDict) -> dict:
    """The data and generation sections, with '{root}' in video paths replaced by config.data.root."""
    data = config.data.to_dict()
    root = data.get("root", "")

    def fill(value):
        if isinstance(value, str) and "{root}" in value:
            if not root:
                raise SystemExit(f"{PROG}: config field 'data.root' is empty but video paths use '{{root}}' "
                                 f"(pass --config.data.root=/path/to/dataset)")
            return value.replace("{root}", root)
        return value

    for split in ("train_videos", "test_videos"):
        data[split] = [{key: fill(value) for key, value in entry.items()} for entry in data[split]]
    return {"data": data, "generation": config.generation.to_dict()}


def prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
    """Runs the generation side in a subprocess unless WORKDIR/data is already prepared."""
    from pavad_jax.occ import data as occ_data

    data_dir = workdir / "data"
    spec = json.loads(json.dumps(generation_spec(config)))  # tuples -> lists, as stored
    if occ_data.is_prepared(data_dir):
        if occ_data.load_summary(data_dir)["spec"] != spec:
            raise SystemExit(f"{PROG}: {data_dir} was prepared with other data/generation settings; "
                             "use a new --workdir (or delete its data/ folder)")
        return data_dir
    spec_path = data_dir / "spec.json"
    atomic.write_json(spec_path, spec, indent=2)
    repo_root = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "generation.rai.cli", "prepare", "--spec", str(spec_path), "--out", str(data_dir)]
    print(f"{PROG}: preparing pseudo-anomalies: {' '.join(command)}", flush=True)
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{PROG}: the generation step failed (exit {result.returncode}); see its output above")
    return data_dir


def cmd_prepare(args) -> None:
    """pavad-occ prepare."""
    prepare(workdir_config(args), pathlib.Path(args.workdir))


def cmd_train(args) -> None:
    """pavad-occ train: prepare if needed, then train A^s, A^t and D."""
    from pavad_jax.occ import train as occ_train

    config = workdir_config(args)
    workdir = pathlib.Path(args.workdir)
    data_dir = prepare(config, workdir)
    summary = occ_train.train_all(config, workdir, data_dir)
    atomic.write_json(workdir / "train_summary.json", summary, indent=2)
    print(json.dumps(summary, indent=2))


def plot_scores(per_video: dict, path: pathlib.Path) -> None:
    """One panel per test video: the aggregate and its indicators over frames, anomalies shaded."""
    plt = plots.pyplot()

    fig, axes = plt.subplots(len(per_video), 1, figsize=(8, 2.2 * len(per_video)), squeeze=False)
    for ax, (vid, s) in zip(axes[:, 0], per_video.items()):
        frames = range(len(s["labels"]))
        ax.fill_between(frames, 0, s["labels"], step="mid", color="red", alpha=0.15, label="anomalous frames")
        for name in ("omega_1", "omega_2", "omega_3", "aggregate"):
            if name in s:
                ax.plot(frames, s[name], label=name, lw=2 if name == "aggregate" else 1)
        ax.set_title(vid, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
    axes[0, 0].legend(fontsize=7, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.12))
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=100)


def cmd_eval(args) -> None:
    """pavad-occ eval: frame scores of every test video, micro-AUCs, a score plot."""
    import numpy as np

    from pavad_jax.occ import scoring

    config = workdir_config(args)
    workdir = pathlib.Path(args.workdir)
    out = workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    per_video, summary = scoring.score_videos(config, workdir, workdir / "data")
    with atomic.atomic_path(out / "scores.npz") as tmp:
        np.savez(tmp, **{f"{vid}/{name}": value for vid, s in per_video.items() for name, value in s.items()})
    atomic.write_json(out / "metrics.json", summary, indent=2)
    plot_scores(per_video, out / "scores.png")
    print(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point of pavad-occ."""
    host_memory.reuse_freed_memory()  # before JAX starts its backend
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_text in (
            ("prepare", cmd_prepare,
             "make training clips, pseudo-anomalies, test videos and CLIP shards in WORKDIR/data"),
            ("train", cmd_train, "prepare if needed, then train the spatial AE, temporal AE and discriminator"),
            ("eval", cmd_eval, "score the test videos: WORKDIR/eval/scores.npz, metrics.json, scores.png")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="config file (path.py or path.py:arg); optional for eval, which "
                                        "reads WORKDIR/config.json. Fields: --config.section.field=value")
        p.add_argument("--workdir", required=True, help="run folder: data/, checkpoints/, metrics.jsonl, eval/")
        p.set_defaults(func=func, needs_config=name != "eval")
    args, overrides = parser.parse_known_args(argv)
    args.overrides = overrides  # --config.FIELD=VALUE tokens; anything else is an error of the loader
    if args.needs_config and not args.config and not (pathlib.Path(args.workdir) / "config.json").is_file():
        parser.error(f"{args.command} needs --config (or a WORKDIR/config.json from an earlier run)")
    args.func(args)


if __name__ == "__main__":
    main()
