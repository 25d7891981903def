"""`pavad-gen`: the generation side of PA-VAD, one subcommand per step.

    pavad-gen select      CLIP initial-image selection            -> <workdir>/plan.jsonl
    pavad-gen refine      VLM prompt refinement                   -> prompts in the plan
    pavad-gen synthesize  Wan 2.2 image-to-video                  -> <workdir>/videos/<id>.mp4 + .json
    pavad-gen extract     I3D / CLIP features                     -> feature shards
    pavad-gen quality     FID / KID / FVD / KVD of generated clips
    pavad-gen run         all steps from a config file            -> <workdir>/features/{train,test}
    pavad-gen gvvad       GV-VAD's generation chain (and its gvvad-* steps, docs/gvvad.md)

Every step can run as many shards (--shard-index/--num-shards, or the scheduler's
environment: see generation/workers.py and launch/gen_*), skips finished items on a rerun and
logs failed items to errors.jsonl. See docs/generation.md.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Step modules are imported only when their subcommand is registered, and each imports its
# heavy dependencies (torch, diffusers, transformers) inside its functions, so that
# `pavad-gen --help` is fast.
STEPS = ("select", "refine", "synthesize", "extract", "quality", "run",
         # GV-VAD's generation side (docs/gvvad.md): gvvad-describe, -t2v, -filter, -extract, gvvad.
         "gvvad.describe", "gvvad.t2v", "gvvad.filter", "gvvad.features", "gvvad.run")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per step module that is present."""
    parser = argparse.ArgumentParser(
        prog="pavad-gen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="step", metavar="STEP", required=True)
    for step in STEPS:
        try:
            module = importlib.import_module(f"generation.{step}")
        except ModuleNotFoundError as error:
            if error.name != f"generation.{step}":
                raise  # a dependency of the step is missing: show the real error
            continue  # the step module is not there (yet)
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen step; return its exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Only the config-driven chains (`run`, `gvvad`) take --config.SECTION.FIELD=VALUE overrides.
    if extra and not getattr(args, "accepts_config_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.config_overrides = extra
    from pavad_jax.config_loader import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as e:  # a bad --config path, variant or field: one line naming it
        print(f"pavad-gen {args.step}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
