"""I3D features of videos for `pavad-detect` (run by it in a subprocess: pavad_jax never imports torch).

    python -m generation.detect_features --videos-file JOBS.json [--protocol P] [--device D] \\
        [--batch-size N] [--max-frames N]

JOBS.json is a list of {"video": path, "features": path.npy}. Each video goes through the same
extractor as the training data (generation/extract.py: 16-frame segments, Kinetics-400 I3D,
10 crops) and its (10, T, 1024) float32 features are saved to its "features" path. Progress
and results are reported on stdout, one JSON object a line after the prefix EVENT_PREFIX:
  {"event": "ready", "device": ..., "protocol": ...}
  {"event": "plan", "segments": [estimated segments per video]}
  {"event": "progress", "index": i, "segments": n}       n more segments of video i done
  {"event": "done", "index": i, "num_frames": N, "fps": f, "T": T, "crops": c}
  {"event": "error", "index": i, "error": "one line naming the file"}
A video that fails (unreadable, fewer than 16 frames) gets an error event and the others still
run. A fatal error (no torch, no weights, a bad setting) is one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys

EVENT_PREFIX = "@pavad-detect "
MIN_FRAMES = 16  # one I3D segment


def emit(event: str, **fields) -> None:
    """One event line on stdout for the parent process."""
    print(EVENT_PREFIX + json.dumps(dict(event=event, **fields)), flush=True)


def estimated_segments(path: str, max_frames: int | None) -> int:
    """Segments a video will give, from its container's frame count or duration (0 if unknown)."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            frames = stream.frames
            if not frames and stream.duration and stream.time_base and stream.average_rate:
                frames = int(stream.duration * stream.time_base * stream.average_rate)
    except (av.error.FFmpegError, IndexError, OSError):
        return 0
    frames = min(frames, max_frames) if max_frames else frames
    return math.ceil(frames / 16)


def i3d_settings(protocol: str | None, device: str | None, batch_size: int | None):
    """ExtractSettings of the training data's I3D features (10 crops, float32 in memory)."""
    from generation.extract import ExtractSettings

    from generation.workers import resolve_device

    device = str(resolve_device(device))
    # On a CPU a bigger batch only costs memory (10 crops per segment).
    settings = ExtractSettings(features="i3d", protocol=protocol or "urdmu", crops="10crop", device=device,
                               dtype="float32", batch_size=batch_size or (8 if device.startswith("cuda") else 1))
    settings.check()
    return settings


def video_i3d_features(path: str, featurize, prepare, settings, max_frames: int | None):
    """(crops, T, 1024) float32 features and the frame count of one video: the one call into the extractor."""
    from generation import extract

    return extract.video_features(path, featurize, prepare=prepare, batch_size=settings.batch_size,
                                  max_frames=max_frames)


def counting(featurize, index: int):
    """`featurize` that reports each finished batch of segments of video `index`."""

    def run(clips, valid):
        out = featurize(clips, valid)
        emit("progress", index=index, segments=len(valid))
        return out

    return run


def extract_video(index: int, job: dict, featurize, prepare, settings, max_frames: int | None) -> None:
    """Features of one video saved to job["features"]; a done or an error event."""
    from generation import media, workers

    path = job["video"]
    try:
        # Decoding the first frames first rejects an unreadable or too short video before any I3D work.
        first = sum(1 for _ in itertools.islice(media.iter_frames(path), MIN_FRAMES))
        if first < MIN_FRAMES:
            raise ValueError(f"{path}: only {first} frames; pavad-detect needs at least {MIN_FRAMES} "
                             "(one I3D segment)")
        features, num_frames = video_i3d_features(path, counting(featurize, index), prepare, settings, max_frames)
        workers.atomic_save_npy(job["features"], features)
        emit("done", index=index, num_frames=int(num_frames), fps=media.video_fps(path), T=int(features.shape[1]),
             crops=int(features.shape[0]))
    except Exception as error:  # one video's failure must not stop the others
        message = " ".join(str(error).split()) or type(error).__name__
        emit("error", index=index, error=message if path in message else f"{path}: {message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generation.detect_features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos-file", required=True, help='JSON list of {"video": path, "features": path.npy}')
    parser.add_argument("--protocol", default=None,
                        help="extract.protocol: urdmu (the public release's resize and crop order, default) or "
                             "shortside")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="16-frame segments per I3D forward pass, times 10 crops (default 8 on a GPU, 1 on a CPU)")
    parser.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each video")
    args = parser.parse_args(argv)
    with open(args.videos_file) as f:
        jobs = json.load(f)
    try:
        from generation.extract import build_featurizer

        settings = i3d_settings(args.protocol, args.device, args.batch_size)
        featurize, prepare = build_featurizer(settings)
        plan = [estimated_segments(job["video"], args.max_frames) for job in jobs]
    except Exception as error:  # no torch, no weights, a bad setting: one line for the parent to show
        print(f"I3D feature extraction cannot start: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    emit("ready", device=str(settings.device), protocol=settings.protocol)
    emit("plan", segments=plan)
    for index, job in enumerate(jobs):
        extract_video(index, job, featurize, prepare, settings, args.max_frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
