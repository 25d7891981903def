"""`python -m generation.rai.cli prepare --spec SPEC.json --out DATA`: Rai et al.'s pseudo-anomalies.

The spec is the `data` and `generation` sections of an occ config as JSON (pavad-occ writes it
and calls this command in a subprocess, so the JAX process never imports torch).
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m generation.rai.cli",
        description="Prepare training clips, spatial (LDM inpainting) and temporal (TV-L1 flow mixup) "
                    "pseudo-anomalies, test videos and CLIP feature shards for pavad-occ.")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write DATA/train, DATA/test and DATA/prepared.json")
    prep.add_argument("--spec", required=True,
                      help="JSON file with 'data' and 'generation' sections (see configs/occ/tiny.py)")
    prep.add_argument("--out", required=True, help="output data folder")
    args = parser.parse_args(argv)

    with open(args.spec) as f:
        spec = json.load(f)
    for section in ("data", "generation"):
        if section not in spec:
            parser.error(f"{args.spec}: field {section!r} is missing")
    from generation.rai.prepare import prepare  # heavy imports (torch, diffusers) after --help

    summary = prepare(spec, args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "spec"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
