"""pavad-detect: from video files to anomaly scores, a score trace and an HTML report.

  pavad-detect clip.mp4 videos/ --checkpoint runs/synthetic [--output detections] [--threshold 0.5]

Each video is decoded and turned into Kinetics-400 I3D 10-crop features by the generation side's
extractor, the same one and the same protocol as the training data (`python -m
generation.detect_features` in a subprocess, PyTorch, a GPU when there is one: this process
never imports torch), then scored here with JAX. --checkpoint is any model directory: a
pavad-train run's best/ or last/, a pavad-import-urdmu output, or a run folder (its best/).

Written under OUTPUT/<video name>/:
  segments.csv   one row per 16-frame segment: index, frames [start, end), seconds, score
  frames.csv     one row per frame: index, time in seconds, score (its segment's score)
  intervals.csv  the anomalous intervals: runs of segments scoring above --threshold
  scores.json    all of the above, the video's fps and frame count, checkpoint and protocol
  trace.png      the score over time, threshold and intervals marked
  report.html    self-contained (no network): the video beside its score curve; a cursor on
                 the curve follows playback, clicking the curve seeks the video
  features.npy   the (10, T, 1024) features (pavad-score --features rescores them)
and OUTPUT/summary.json lists every video. A video that cannot be read or has fewer than 16
frames gets a one-line error naming the file; the others still run, and the exit status is 1.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import urllib.parse

import numpy as np

from pavad_jax import atomic, plots

PROG = "pavad-detect"
SEGMENT_FRAMES = 16
I3D_FEATURE_DIM = 1024
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")
VIDEO_MIME = {".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
              ".avi": "video/x-msvideo", ".mpg": "video/mpeg", ".mpeg": "video/mpeg"}
ASSUMED_FPS = 25.0  # when a video declares no frame rate
EVENT_PREFIX = "@pavad-detect "  # generation.detect_features.EVENT_PREFIX (not imported: it is the torch side)


# --------------------------------------------------------------------------- inputs

def feature_protocol(given: str | None, model_dir: pathlib.Path) -> str | None:
    """--protocol, else the one the model directory records (config.json "features": {"protocol": ...},
    written by export_model from the training shards' manifests).

    None leaves the choice to the extractor (its default).
    """
    if given:
        return given
    features = json.loads((model_dir / "config.json").read_text()).get("features")
    return features.get("protocol") if isinstance(features, dict) else None


def list_videos(inputs: list[str]) -> tuple[list[pathlib.Path], list[str]]:
    """Video files from files and folders (recursive), and one error line per input that is neither."""
    videos, errors = [], []
    for given in inputs:
        path = pathlib.Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            videos += found
            if not found:
                errors.append(f"{path}: folder holds no video ({', '.join(VIDEO_SUFFIXES)})")
        elif path.is_file():
            videos.append(path)
        else:
            errors.append(f"{path}: no such video file or folder")
    return videos, errors


def output_names(videos: list[pathlib.Path]) -> list[str]:
    """A distinct folder name per video: its stem with characters other than A-Z a-z 0-9 _ - replaced, numbered when repeated."""
    names: list[str] = []
    for video in videos:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", video.stem) or "video"
        name, number = base, 1
        while name in names:
            number += 1
            name = f"{base}_{number}"
        names.append(name)
    return names


# --------------------------------------------------------------------------- scores and tables

def segment_rows(scores: np.ndarray, num_frames: int, fps: float) -> list[dict]:
    """One row per segment: frames [start, end) (the last one cut at the video's end) and seconds."""
    rows = []
    for k, score in enumerate(scores):
        start, end = k * SEGMENT_FRAMES, min((k + 1) * SEGMENT_FRAMES, num_frames)
        rows.append(dict(segment=k, start_frame=start, end_frame=end, start_s=round(start / fps, 4),
                         end_s=round(end / fps, 4), score=float(score)))
    return rows


def anomalous_intervals(scores: np.ndarray, threshold: float, num_frames: int, fps: float) -> list[dict]:
    """Maximal runs of segments scoring above `threshold`, in frames [start, end) and seconds."""
    edges = np.diff(np.r_[0, (scores > threshold).astype(np.int8), 0])
    intervals = []
    for first, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        start, end = int(first) * SEGMENT_FRAMES, min(int(stop) * SEGMENT_FRAMES, num_frames)
        intervals.append(dict(start_frame=start, end_frame=end, start_s=round(start / fps, 4),
                              end_s=round(end / fps, 4), segments=[int(first), int(stop)],
                              peak_score=float(scores[first:stop].max()), mean_score=float(scores[first:stop].mean())))
    return intervals


def write_csv(path: pathlib.Path, rows: list[dict], columns: list[str]) -> None:
    """Rows as CSV with a header, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def plot_trace(path: pathlib.Path, title: str, segments: list[dict], intervals: list[dict], threshold: float) -> None:
    """The segment scores over time (steps), the threshold dashed, the anomalous intervals shaded."""
    plt = plots.pyplot()
    times = [s["start_s"] for s in segments] + [segments[-1]["end_s"]]
    values = [s["score"] for s in segments]
    fig, ax = plt.subplots(figsize=(8, 2.6))
    for interval in intervals:
        ax.axvspan(interval["start_s"], interval["end_s"], color="tab:red", alpha=0.18, lw=0)
    ax.stairs(values, times, color="tab:blue", lw=1.5, baseline=None)
    ax.axhline(threshold, color="tab:red", ls="--", lw=1)
    ax.set(xlim=(0, times[-1]), ylim=(0, 1.02), xlabel="time (s)", ylabel="anomaly score", title=title)
    fig.tight_layout()
    plots.save_figure(fig, path, dpi=110)


# --------------------------------------------------------------------------- HTML report

_PLOT = dict(width=720, height=260, left=48, right=14, top=14, bottom=38)


def _nice_step(span: float, ticks: int = 8) -> float:
    """A 1/2/5 x 10^k tick step giving at most about `ticks` ticks over `span`."""
    raw = max(span / ticks, 1e-9)
    power = 10 ** np.floor(np.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def curve_svg(segments: list[dict], intervals: list[dict], threshold: float, duration: float) -> str:
    """The score curve as inline SVG: steps per segment, threshold, intervals, axes, a cursor line."""
    g = _PLOT
    plot_w, plot_h = g["width"] - g["left"] - g["right"], g["height"] - g["top"] - g["bottom"]
    x = lambda t: g["left"] + plot_w * min(max(t / duration, 0.0), 1.0)
    y = lambda s: g["top"] + plot_h * (1.0 - min(max(s, 0.0), 1.0))
    points = []
    for s in segments:
        points += [f"{x(s['start_s']):.2f},{y(s['score']):.2f}", f"{x(s['end_s']):.2f},{y(s['score']):.2f}"]
    parts = [f'<svg id="curve" xmlns="http://www.w3.org/2000/svg" width="{g["width"]}" height="{g["height"]}" '
             f'viewBox="0 0 {g["width"]} {g["height"]}" role="img" aria-label="anomaly score over time">',
             f'<rect x="{g["left"]}" y="{g["top"]}" width="{plot_w}" height="{plot_h}" class="plot-area"/>']
    for interval in intervals:
        parts.append(f'<rect class="interval" x="{x(interval["start_s"]):.2f}" y="{g["top"]}" '
                     f'width="{x(interval["end_s"]) - x(interval["start_s"]):.2f}" height="{plot_h}"/>')
    for s in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line class="grid" x1="{g["left"]}" x2="{g["left"] + plot_w}" y1="{y(s):.2f}" y2="{y(s):.2f}"/>'
                     f'<text class="tick" x="{g["left"] - 6}" y="{y(s) + 4:.2f}" text-anchor="end">{s:g}</text>')
    step = _nice_step(duration)
    for t in np.arange(0.0, duration + 1e-9, step):
        parts.append(f'<line class="grid" x1="{x(t):.2f}" x2="{x(t):.2f}" y1="{g["top"]}" y2="{g["top"] + plot_h}"/>'
                     f'<text class="tick" x="{x(t):.2f}" y="{g["top"] + plot_h + 16}" text-anchor="middle">{t:g}</text>')
    parts += [f'<line class="threshold" x1="{g["left"]}" x2="{g["left"] + plot_w}" y1="{y(threshold):.2f}" '
              f'y2="{y(threshold):.2f}"/>',
              f'<polyline id="score-line" class="score" points="{" ".join(points)}"/>',
              f'<line id="cursor" x1="{g["left"]}" x2="{g["left"]}" y1="{g["top"]}" y2="{g["top"] + plot_h}"/>',
              f'<text class="label" x="{g["left"] + plot_w / 2}" y="{g["height"] - 4}" text-anchor="middle">'
              'time (s) · click to seek</text>', "</svg>"]
    return "\n".join(parts)


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; margin: 0 0 4px; } .meta { color: #555; margin: 0 0 12px; }
.row { display: flex; gap: 16px; align-items: flex-start; }
video { width: 420px; max-height: 320px; background: #000; }
#curve { cursor: crosshair; display: block; }
.plot-area { fill: #fafafa; stroke: #bbb; } .grid { stroke: #e4e4e4; } .tick, .label { font-size: 11px; fill: #555; }
.interval { fill: rgba(214, 39, 40, 0.18); } .threshold { stroke: #d62728; stroke-dasharray: 5 4; }
.score { fill: none; stroke: #1f77b4; stroke-width: 2; } #cursor { stroke: #111; stroke-width: 1.5; }
#readout { margin: 6px 0 0 48px; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; margin-top: 14px; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; }
tr[data-seek] { cursor: pointer; } tr[data-seek]:hover { background: #eef4fb; }
"""

_JS = """
(function () {
  var data = JSON.parse(document.getElementById("detect-data").textContent);
  var video = document.getElementById("video"), svg = document.getElementById("curve");
  var cursor = document.getElementById("cursor"), readout = document.getElementById("readout");
  var g = data.plot, width = g.width - g.left - g.right;
  function xOf(t) { return g.left + width * Math.min(Math.max(t / data.duration, 0), 1); }
  function tOf(x) { return data.duration * Math.min(Math.max((x - g.left) / width, 0), 1); }
  function show() {
    var t = video.currentTime || 0, x = xOf(t);
    var k = Math.min(Math.floor(t * data.fps / data.segment_frames), data.scores.length - 1);
    cursor.setAttribute("x1", x);
    cursor.setAttribute("x2", x);
    readout.textContent = t.toFixed(2) + " s   segment " + k + "   score " + data.scores[k].toFixed(3);
  }
  function seek(t) { video.currentTime = t; show(); }
  svg.addEventListener("click", function (event) {
    var point = svg.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    seek(tOf(point.matrixTransform(svg.getScreenCTM().inverse()).x));
  });
  function follow() { show(); if (!video.paused && !video.ended) requestAnimationFrame(follow); }
  video.addEventListener("play", function () { requestAnimationFrame(follow); });
  video.addEventListener("timeupdate", show);
  video.addEventListener("seeked", show);
  document.querySelectorAll("[data-seek]").forEach(function (row) {
    row.addEventListener("click", function () { seek(parseFloat(row.dataset.seek)); });
  });
  var start = /[#&]t=([0-9.]+)/.exec(location.hash);  // report.html#t=12.5 opens at 12.5 s
  if (start) video.addEventListener("loadedmetadata", function () { seek(parseFloat(start[1])); });
  show();
})();
"""


def video_source(video: pathlib.Path, report_dir: pathlib.Path, embed_limit_bytes: int) -> tuple[str, bool]:
    """The <video> src: a data: URI when the file is at most embed_limit_bytes, else a relative path."""
    mime = VIDEO_MIME.get(video.suffix.lower(), "video/mp4")
    if video.stat().st_size <= embed_limit_bytes:
        return f"data:{mime};base64,{base64.b64encode(video.read_bytes()).decode('ascii')}", True
    relative = os.path.relpath(video.absolute(), report_dir.absolute())
    return urllib.parse.quote(pathlib.Path(relative).as_posix()), False


def report_html(result: dict, video_src: str, embedded: bool) -> str:
    """The self-contained report page of one video."""
    segments, intervals = result["segments"], result["intervals"]
    duration = result["num_frames"] / result["fps"]
    data = dict(fps=result["fps"], segment_frames=SEGMENT_FRAMES, duration=duration,
                scores=[s["score"] for s in segments], plot=_PLOT)
    rows = "\n".join(
        f'<tr data-seek="{i["start_s"]}"><td>{i["start_s"]:.2f} – {i["end_s"]:.2f} s</td>'
        f'<td>{i["start_frame"]}–{i["end_frame"]}</td><td>{i["peak_score"]:.3f}</td>'
        f'<td>{i["mean_score"]:.3f}</td></tr>' for i in intervals)
    table = (f"<table><tr><th>anomalous interval (click to seek)</th><th>frames</th><th>peak score</th>"
             f"<th>mean score</th></tr>{rows}</table>"
             if intervals else f"<p>No segment scores above the threshold {result['threshold']:g}.</p>")
    fps_note = "" if result["fps_declared"] else f" (the video declares no frame rate: {ASSUMED_FPS:g} assumed)"
    source_note = "embedded" if embedded else "linked by relative path: keep the report beside it"
    if result.get("max_frames"):
        fps_note += f" (--max-frames {result['max_frames']}: only these scored)"
    meta = (f"{result['num_frames']} frames at {result['fps']:.3f} fps{fps_note}, {len(segments)} segments of "
            f"{SEGMENT_FRAMES} frames · max score {max(data['scores']):.3f} · threshold {result['threshold']:g} · "
            f"checkpoint {result['checkpoint']} · features: I3D {result['protocol']} protocol · video {source_note}")
    payload = json.dumps(data).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(result['name'])}: anomaly scores</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(pathlib.Path(result['video']).name)}</h1>
<p class="meta">{html.escape(str(result['video']))}<br>{html.escape(meta)}</p>
<div class="row">
<video id="video" controls preload="auto" src="{html.escape(video_src)}"></video>
<div>{curve_svg(segments, intervals, result['threshold'], duration)}
<div id="readout"></div></div>
</div>
{table}
<script type="application/json" id="detect-data">{payload}</script>
<script>{_JS}</script>
</body></html>
"""


def write_outputs(out_dir: pathlib.Path, result: dict, video: pathlib.Path, embed_limit_bytes: int) -> None:
    """segments.csv, frames.csv, intervals.csv, scores.json, trace.png and report.html of one video."""
    segments, intervals = result["segments"], result["intervals"]
    write_csv(out_dir / "segments.csv", segments, ["segment", "start_frame", "end_frame", "start_s", "end_s", "score"])
    frame_scores = np.repeat([s["score"] for s in segments], SEGMENT_FRAMES)[: result["num_frames"]]
    frame_times = np.arange(result["num_frames"]) / result["fps"]
    write_csv(out_dir / "frames.csv",
              [dict(frame=i, time_s=f"{t:.4f}", score=f"{s:.6f}") for i, (t, s) in enumerate(zip(frame_times, frame_scores))],
              ["frame", "time_s", "score"])
    write_csv(out_dir / "intervals.csv", intervals,
              ["start_frame", "end_frame", "start_s", "end_s", "peak_score", "mean_score"])
    atomic.write_json(out_dir / "scores.json", dict(result, frames=dict(time_s=np.round(frame_times, 4).tolist(),
                                                                        score=frame_scores.tolist())), indent=1)
    plot_trace(out_dir / "trace.png", result["name"], segments, intervals, result["threshold"])
    src, embedded = video_source(video, out_dir, embed_limit_bytes)
    atomic.write_text(out_dir / "report.html", report_html(result, src, embedded))


# --------------------------------------------------------------------------- running

def extraction_command(jobs_file: pathlib.Path, args: argparse.Namespace, protocol: str | None) -> list[str]:
    """The generation side's feature extraction, as a command line."""
    command = [sys.executable, "-m", "generation.detect_features", "--videos-file", str(jobs_file)]
    for flag, value in (("--protocol", protocol), ("--device", args.device), ("--batch-size", args.batch_size),
                        ("--max-frames", args.max_frames)):
        if value is not None:
            command += [flag, str(value)]
    return command


def extraction_events(command: list[str]):
    """Run the extractor, yield its events; at the end one {"event": "exit", "status", "message"}."""
    repo_root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryFile("w+") as stderr, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env) as process:
        try:
            for line in process.stdout:
                if line.startswith(EVENT_PREFIX):
                    yield json.loads(line[len(EVENT_PREFIX):])
        finally:
            if process.poll() is None:  # the consumer stopped early (Ctrl-C): stop the extractor too
                process.kill()
        status = process.wait()
        stderr.seek(0)
        lines = [line.strip() for line in stderr.read().splitlines() if line.strip()]
    yield dict(event="exit", status=status, message=lines[-1] if lines else "")


def score_features(detector, features: np.ndarray) -> np.ndarray:
    """(T,) scores of (crops, T, D) features, crops averaged (pavad-score's scoring)."""
    from pavad_jax.score import score_video

    return score_video(detector, features)


def score_video_file(video: pathlib.Path, name: str, out_dir: pathlib.Path, done: dict, detector, *,
                     checkpoint_dir: pathlib.Path, protocol: str, args: argparse.Namespace) -> dict:
    """Score one extracted video and write its outputs; its summary entry."""
    features = np.load(out_dir / "features.npy")
    num_frames = int(done["num_frames"])
    expected_t = -(-num_frames // SEGMENT_FRAMES)
    if features.ndim != 3 or features.shape[1:] != (expected_t, I3D_FEATURE_DIM):
        raise ValueError(f"{video}: features have shape {features.shape}, expected (crops, {expected_t}, "
                         f"{I3D_FEATURE_DIM}) for {num_frames} frames")
    scores = score_features(detector, features)
    if not np.isfinite(scores).all():
        raise ValueError(f"{video}: the model gave non-finite scores ({int((~np.isfinite(scores)).sum())} segments)")
    fps_declared = done["fps"] > 0
    fps = float(done["fps"]) if fps_declared else ASSUMED_FPS
    segments = segment_rows(scores, num_frames, fps)
    intervals = anomalous_intervals(scores, args.threshold, num_frames, fps)
    result = dict(name=name, video=str(video), checkpoint=str(checkpoint_dir), protocol=protocol,
                  threshold=args.threshold, fps=fps, fps_declared=fps_declared, num_frames=num_frames,
                  max_frames=args.max_frames, segment_frames=SEGMENT_FRAMES, crops=int(features.shape[0]),
                  segments=segments, intervals=intervals)
    write_outputs(out_dir, result, video, int(args.embed_video_mb * 2**20))
    return dict(video=str(video), output=str(out_dir), report=str(out_dir / "report.html"), segments=len(segments),
                max_score=float(scores.max()), intervals=[[i["start_s"], i["end_s"]] for i in intervals])


def detect_videos(videos: list[pathlib.Path], model_dir: pathlib.Path, out_root: pathlib.Path,
                  args: argparse.Namespace) -> list[dict]:
    """Extract every video's features (one subprocess) and score each as soon as it is ready.

    Returns one summary entry per video, in order; a failed video's entry has "error".
    """
    import jax
    from tqdm import tqdm

    from pavad_jax import checkpoint

    out_dirs = [out_root / name for name in output_names(videos)]
    entries: list[dict | None] = [None] * len(videos)
    planned, seen = [0] * len(videos), [0] * len(videos)
    detector, protocol, exit_event = None, None, {}
    with tempfile.TemporaryDirectory() as scratch, tqdm(total=0, unit="segment", desc=PROG) as bar:
        jobs_file = pathlib.Path(scratch) / "jobs.json"
        jobs_file.write_text(json.dumps([dict(video=str(v), features=str(d / "features.npy"))
                                         for v, d in zip(videos, out_dirs)]))
        command = extraction_command(jobs_file, args, feature_protocol(args.protocol, model_dir))
        for event in extraction_events(command):
            kind, i = event["event"], event.get("index")
            if kind == "ready":
                protocol = event["protocol"]
                tqdm.write(f"{PROG}: I3D features on {event['device']} (torch, {protocol} protocol), "
                           f"scores on {jax.devices()[0].platform} (JAX), checkpoint {model_dir}")
                detector, _ = checkpoint.load_model(model_dir)  # while the extractor starts on the first video
            elif kind == "plan":
                planned = event["segments"]
                bar.total = sum(planned)
                bar.refresh()
            elif kind == "progress":
                seen[i] += event["segments"]
                bar.update(event["segments"])
            elif kind in ("done", "error"):
                bar.total += seen[i] - planned[i]  # the estimate becomes the real count
                bar.refresh()
                try:
                    if kind == "error":
                        raise ValueError(event["error"])
                    entries[i] = score_video_file(videos[i], out_dirs[i].name, out_dirs[i], event, detector,
                                                  checkpoint_dir=model_dir, protocol=protocol, args=args)
                    tqdm.write(f"{videos[i]}: {entries[i]['segments']} segments, max score "
                               f"{entries[i]['max_score']:.3f}, {len(entries[i]['intervals'])} interval(s) above "
                               f"{args.threshold:g} -> {entries[i]['report']}")
                except (ValueError, OSError) as error:
                    entries[i] = dict(video=str(videos[i]), error=str(error))
                    tqdm.write(f"{PROG}: error: {error}", file=sys.stderr)
            elif kind == "exit":
                exit_event = event
    for i, entry in enumerate(entries):
        if entry is None:
            reason = exit_event.get("message") or f"exit status {exit_event.get('status')}"
            entries[i] = dict(video=str(videos[i]), error=f"{videos[i]}: not scored: the I3D extractor stopped ({reason})")
            print(f"{PROG}: error: {entries[i]['error']}", file=sys.stderr)
    return entries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", metavar="VIDEO_OR_FOLDER", help="video files, or folders searched recursively")
    parser.add_argument("--checkpoint", required=True,
                        help="model directory (pavad-train best/ or last/, pavad-import-urdmu output) or a "
                             "pavad-train run folder (its best/)")
    parser.add_argument("--output", default="detections", help="output folder (default ./detections)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="segments scoring above it form the anomalous intervals (default 0.5)")
    parser.add_argument("--protocol", default=None,
                        help="I3D feature protocol (generation/extract.py's protocol setting: urdmu, the public "
                             "releases' resize and crop order, or shortside); default: the one the checkpoint records "
                             "(config.json features.protocol), else urdmu. Use the training features' protocol")
    parser.add_argument("--device", default=None, help="torch device of the I3D extraction (default cuda if available)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="16-frame segments per I3D forward pass, times 10 crops (default 8 on a GPU, 1 on a CPU)")
    parser.add_argument("--max-frames", type=int, default=None, help="score only the first N frames (N >= 16) of each video")
    parser.add_argument("--embed-video-mb", type=float, default=25.0,
                        help="embed videos up to this size in report.html, link larger ones by relative path (default 25)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.max_frames < SEGMENT_FRAMES:
        raise SystemExit(f"{PROG}: error: --max-frames must be at least {SEGMENT_FRAMES} (one segment), got {args.max_frames}")
    if not 0.0 <= args.threshold <= 1.0:
        raise SystemExit(f"{PROG}: error: --threshold must be in [0, 1] (scores are), got {args.threshold}")
    # JAX must not take most of the GPU the I3D extractor shares with it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from pavad_jax import checkpoint  # imports JAX

    try:
        model_dir = checkpoint.model_dir_of(args.checkpoint)
        model_config = checkpoint.read_config(model_dir).model
        feature_dim = int(model_config.feature_dim)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"{PROG}: error: {error}") from error
    if model_config.name in ("lap", "tevad"):
        raise SystemExit(f"{PROG}: error: {model_dir}: field 'model.name' is {model_config.name!r}, which reads "
                         "per-segment caption embeddings pavad-detect does not make; score with pavad-score --captions")
    if feature_dim != I3D_FEATURE_DIM:
        raise SystemExit(f"{PROG}: error: {model_dir}: field 'model.feature_dim' is {feature_dim}, but pavad-detect "
                         f"extracts {I3D_FEATURE_DIM}-d I3D features; use a checkpoint trained on I3D features")
    videos, failures = list_videos(args.videos)
    for failure in failures:
        print(f"{PROG}: error: {failure}", file=sys.stderr)
    out_root = pathlib.Path(args.output)
    out_root.mkdir(parents=True, exist_ok=True)
    entries = [dict(video=f.split(": ")[0], error=f) for f in failures]
    if videos:
        entries += detect_videos(videos, model_dir, out_root, args)
    atomic.write_json(out_root / "summary.json", dict(checkpoint=str(model_dir), threshold=args.threshold,
                                                      videos=entries), indent=1)
    failed = sum("error" in e for e in entries)
    print(f"{PROG}: {len(entries) - failed} of {len(entries)} inputs scored, {failed} failed; "
          f"summary in {out_root / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
