"""`pavad-gen run`: chain select -> refine -> synthesize -> extract from one config file.

    pavad-gen run --config configs/generation/tiny.py --workdir /tmp/pavad_tiny
    pavad-gen run --config configs/generation/sht.py --workdir runs/gen_sht \\
        --config.select.videos=/data/sht/train_normal --config.synthesize.device=cuda

The config (ml_collections, ``get_config(arg)``; ``--config FILE:ARG`` picks a variant) has one
section per step whose fields are those of the step's settings (``SelectSettings``,
``RefineSettings``, ``SynthesizeSettings``, ``ExtractSettings``: the same names as the step's
flags, ``pavad-gen STEP --help``); every section is checked before the first step runs. Any
field can be overridden with ``--config.SECTION.FIELD=VALUE`` (VALUE is read as a Python
literal, else as a string).

Outputs under ``--workdir``: plan.jsonl, init_images/, prompts/, videos/ and the dataset
``features/`` with ``train/`` (real normal, pseudo-abnormal, pseudo-normal streams) and
``test/``, ready for ``pavad-train --config.data.dir=<workdir>/features``. The dataset path is
printed last and written to ``<workdir>/dataset.txt``.

A config may ask for a *synthetic test split* (section ``test_set``, used by the tiny config
where no labelled real test videos exist): for a few abnormal plan items a second clip is
synthesised (ids ``test-<id>``, own seeds), and each test video is ``real_frames`` frames of
a real normal video (labels 0) followed by that clip (labels 1), written to
``<workdir>/test_videos/`` with per-frame labels in ``<workdir>/test_labels.json``.

Each step skips what is finished, so rerunning the same command resumes. ``--steps`` runs a
subset; with ``--shard-index/--num-shards`` (or the scheduler's environment) each step takes
its shard's items, which is how the launch/ templates run one step on many workers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from generation import media, workers
from generation.step_settings import from_section
from pavad_jax.config_loader import load_config

STEPS = ("select", "refine", "synthesize", "extract")


# --------------------------------------------------------------------------- config
# Config files and --config.FIELD=VALUE overrides are read by the one loader every command
# uses (pavad_jax/config_loader.py: plain Python and ml_collections, no JAX).

def section(config, name: str) -> dict:
    """A config section as plain keyword arguments (ConfigDicts and tuples unwrapped)."""
    if name not in config:
        return {}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in config[name].to_dict().items()}


# --------------------------------------------------------------------------- synthetic test split

def build_synthetic_test_set(workdir: Path, *, count: int, real_videos: str, real_frames: int,
                             synthesize, shard: tuple[int, int]) -> None:
    """Make `count` labelled test videos: real normal frames, then a freshly synthesised clip."""
    from generation.select import candidate_videos
    from generation.synthesize import run_synthesize

    plan = [item for item in workers.read_jsonl(workdir / "plan.jsonl") if item["kind"] == "abnormal"]
    test_plan = [{**item, "id": f"test-{item['id']}"} for item in plan[:count]]
    test_dir = workdir / "test_synth"
    workers.write_jsonl(test_dir / "plan.jsonl", [{**item, "image": str(workers.plan_file_path(
        workdir / "plan.jsonl", item["image"]).resolve())} for item in test_plan])
    run_synthesize(dataclasses.replace(synthesize, plan=None), workdir=str(test_dir), shard=shard)
    reals = candidate_videos(real_videos)
    labels = {}
    for number, item in enumerate(test_plan):  # every shard writes every finished test video
        meta_path = workers.metadata_path(test_dir / "videos", item["id"])
        if not meta_path.exists():
            continue  # not synthesised yet (another shard) or failed (test_synth/videos/errors.jsonl)
        target = workdir / "test_videos" / f"{item['id']}.mp4"
        clip_frames = json.loads(meta_path.read_text())["frames"]
        if not target.exists():
            clip = media.read_frames(test_dir / "videos" / f"{item['id']}.mp4")
            height, width = clip.shape[1:3]
            real = media.read_frames(reals[number % len(reals)], range(real_frames))
            prefix = np.stack([media.resize(frame, width, height) for frame in real])
            media.write_mp4(target, np.concatenate([prefix, clip]), fps=synthesize.fps)
        labels[item["id"]] = [0] * real_frames + [1] * clip_frames
    workers.atomic_write_json(workdir / "test_labels.json", labels)


# --------------------------------------------------------------------------- the chain

def run_all(config, workdir: str | Path, steps=STEPS, shard: tuple[int, int] = (0, 1)) -> Path:
    """Run the chosen steps of `config` in order in `workdir`; return the dataset folder."""
    from generation.extract import ExtractSettings, run_extract
    from generation.refine import RefineSettings, run_refine
    from generation.select import SelectSettings, run_select
    from generation.synthesize import SynthesizeSettings, run_synthesize

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}: choose from {STEPS}")
    # Every section is checked before any step runs: a typo fails now, not after hours of synthesis.
    select, refine, synthesize, extract = (from_section(cls, section(config, name), name) for cls, name in (
        (SelectSettings, "select"), (RefineSettings, "refine"), (SynthesizeSettings, "synthesize"),
        (ExtractSettings, "extract")))
    if "select" in steps and run_select(select, workdir=str(workdir), shard=shard) is None:
        return _stop(workdir, "select")
    if "refine" in steps and run_refine(refine, workdir=str(workdir), shard=shard) is None:
        return _stop(workdir, "refine")
    test_set = section(config, "test_set")
    synthetic_test = test_set.pop("synthetic", False)
    if "synthesize" in steps:
        run_synthesize(synthesize, workdir=str(workdir), shard=shard)
        if synthetic_test:
            build_synthetic_test_set(workdir, synthesize=synthesize, shard=shard, **test_set)
    dataset = workdir / "features"
    if "extract" in steps:
        if not all(extract.real_normal or [""]):
            raise ValueError("run: extract.real_normal is empty: set --config.extract.real_normal to "
                             "the real normal training videos (the 'normal' stream of train/)")
        if synthetic_test:
            extract = dataclasses.replace(extract, test_videos=extract.test_videos + (str(workdir / "test_videos"),),
                                          test_labels=str(workdir / "test_labels.json"))
        run_extract(extract, workdir=str(workdir), out_dir=str(dataset), shard_index=shard[0], num_shards=shard[1])
        workers.atomic_write_text(workdir / "dataset.txt", f"{dataset.resolve()}\n")
        print(f"run: dataset -> {dataset.resolve()}")
    return dataset


def _stop(workdir: Path, step: str) -> Path:
    """Report that a step is waiting for other shards and return the (unfinished) dataset path."""
    print(f"run: {step} is not complete yet (other shards, or failed items); rerun when it is")
    return workdir / "features"


def register(subparsers) -> None:
    """Add the `run` subcommand."""
    parser = subparsers.add_parser(
        "run", help="all steps from a config file -> <workdir>/features/{train,test}",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="config file, e.g. configs/generation/tiny.py (FILE:ARG picks a variant); "
                             "fields are overridden with --config.SECTION.FIELD=VALUE")
    parser.add_argument("--workdir", required=True, help="output folder; rerunning the same one resumes")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                        help="run only these steps (in the fixed order select, refine, synthesize, extract)")
    workers.add_shard_args(parser)
    parser.set_defaults(func=_main, accepts_config_overrides=True)


def _main(args) -> int:
    """Entry of `pavad-gen run`."""
    config = load_config(args.config, args.config_overrides, command="pavad-gen run", expected="generation")
    run_all(config, args.workdir, steps=tuple(args.steps), shard=workers.resolve_shard(args))
    return 0

