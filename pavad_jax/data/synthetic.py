"""The embedded synthetic benchmark: the PA-VAD setting simulated in I3D-like feature space.

Real I3D features and diffusion-generated videos cannot be downloaded here, so this module
builds a dataset with the same structure and the same documented confound (docs/data.md has
the full generative model):

- train/: real normal videos, pseudo-abnormal videos (class-specific anomaly patterns plus the
  generator's shift), pseudo-normal videos (the generator's shift, no anomaly) and a few real
  abnormal videos (weak labels only; for the UR-DMU and GV-VAD baselines);
- test/: real normal and real abnormal videos (the same class patterns, no generator shift,
  over short intervals) with frame labels aligned to T*16 frames.

The generator shift is (1) a larger feature magnitude, calibrated so that the mean segment L2
norm of pseudo anomalies is 23.03 against 20.52 for real anomalies (PA-VAD Table 1), (2)
excess motion and viewpoint change (faster-varying activity and a drifting scene base, so a
larger frame-to-frame drift), (3) a small constant "style" direction and (4) an imperfect
rendering of each class pattern. Nothing here is tuned to make any method win.

Everything is a deterministic function of (size, seed): every video draws from its own
`np.random.default_rng([seed, split, stream, index])`.

Size "ucf" is different: random features with UCF-Crime's real shapes (the 290 test videos at
their public segment counts, 1,610 training videos at lengths drawn from the same
distribution, 10 crops, D = 1024, float16), for measuring speed and memory at the benchmark's
real size only; they carry no anomaly signal (`generate_ucf`).
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import os
import pathlib
import re
import shutil
import tempfile

import numpy as np
from tqdm import tqdm

from pavad_jax import atomic
from pavad_jax.shards import SEGMENT_FRAMES, ShardError, ShardSet, ShardWriter, VideoRecord

GENERATOR_VERSION = 1  # bump when the generative model changes: cached copies are rebuilt
REAL_ANOMALY_NORM = 20.52  # PA-VAD Table 1, mean I3D feature norm of real anomalies (UCF-Crime)
PSEUDO_ANOMALY_NORM = 23.03  # ... and of pseudo anomalies
CLASS_NAMES = ("Abuse", "Arson", "Explosion", "Fighting", "RoadAccidents", "Shooting", "Stealing", "Vandalism")
INFO_FILE = "synthetic.json"


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of one variant of the benchmark; T ranges are (min, max) segments, log-uniform."""

    feature_dim: int
    crops: int
    num_classes: int
    num_scenes: int
    train_normal: int
    train_pseudo_abnormal: int
    train_pseudo_normal: int
    train_real_abnormal: int
    test_normal: int
    test_abnormal: int
    real_train_t: tuple[int, int]
    pseudo_t: tuple[int, int]
    test_t: tuple[int, int]


SIZES = {
    # Seconds to build; for tests and `runlocal` configs.
    "small": SyntheticSpec(feature_dim=64, crops=2, num_classes=3, num_scenes=6, train_normal=32,
                           train_pseudo_abnormal=24, train_pseudo_normal=12, train_real_abnormal=8,
                           test_normal=12, test_abnormal=12, real_train_t=(16, 64), pseudo_t=(6, 24),
                           test_t=(24, 96)),
    # XD-Violence's shape in miniature for configs/xd.py:runlocal: 5 crops, a real-abnormal
    # training stream (weak labels) beside the real normals; the 4 pseudo clips go unused there.
    "xd_small": SyntheticSpec(feature_dim=64, crops=5, num_classes=3, num_scenes=6, train_normal=24,
                              train_pseudo_abnormal=4, train_pseudo_normal=0, train_real_abnormal=20,
                              test_normal=10, test_abnormal=10, real_train_t=(16, 64), pseudo_t=(6, 24),
                              test_t=(24, 96)),
    # UR-DMU-size features (D = 1024); a UR-DMU model trains on it in minutes on a CPU.
    "default": SyntheticSpec(feature_dim=1024, crops=2, num_classes=6, num_scenes=12, train_normal=200,
                             train_pseudo_abnormal=160, train_pseudo_normal=80, train_real_abnormal=40,
                             test_normal=60, test_abnormal=40, real_train_t=(32, 192), pseudo_t=(8, 48),
                             test_t=(48, 320)),
}

# Constants of the generative model (per-dimension scales before the final calibration).
_ACTIVITY_RANK = 16
_CLASS_RANK = 4
_REAL_DYNAMICS = dict(rho=0.9, activity=0.35, drift=0.0)
_PSEUDO_DYNAMICS = dict(rho=0.6, activity=0.55, drift=0.08)  # excess motion and viewpoint change
_NOISE = 0.12
_CROP_JITTER = 0.05
_STYLE_WEIGHT = 0.25
_STREAM_CODES = {"normal": 0, "abnormal": 1, "pseudo-abnormal": 2, "pseudo-normal": 3}
_SPLIT_CODES = {"world": 0, "train": 1, "test": 2}
SPLITS = ("train", "test")

# The UCF-Crime-shaped benchmark data (size "ucf"): the public shapes of the I3D release.
UCF = "ucf"
UCF_CROPS = 10
UCF_FEATURE_DIM = 1024
UCF_TRAIN_VIDEOS = {"abnormal": 810, "normal": 800}
UCF_TEST_SEGMENTS_FILE = "ucf_test_num_segments.txt"  # `<video> <T>` per test video, in test-list order
SIZE_NAMES = (*SIZES, UCF)


# ----------------------------------------------------------------------------- the world


@dataclasses.dataclass
class World:
    """Shared structure of one synthetic dataset: scenes, activity, anomaly classes, generator."""

    scenes: np.ndarray  # (S, D) non-negative scene bases (camera views)
    activity: np.ndarray  # (r, D) basis of normal activity
    class_patterns: np.ndarray  # (C, D) non-negative mean pattern of each anomaly class
    class_motion: np.ndarray  # (C, r_c, D) class-specific motion subspace
    pseudo_patterns: np.ndarray  # (C, D) the generator's (imperfect) rendering of each class
    style: np.ndarray  # (D,) non-negative appearance direction shared by generated videos
    class_names: tuple[str, ...]


def make_world(spec: SyntheticSpec, seed: int) -> World:
    """Draw the shared structure of the dataset from `seed`."""
    rng = np.random.default_rng([seed, _SPLIT_CODES["world"]])
    d, c = spec.feature_dim, spec.num_classes
    scenes = rng.gamma(0.6, 1.0, (spec.num_scenes, d))
    activity = rng.normal(0, 1, (_ACTIVITY_RANK, d)) / np.sqrt(_ACTIVITY_RANK)
    # Each class lights up its own ~10% of the dimensions.
    support = rng.random((c, d)) < 0.10
    class_patterns = np.where(support, rng.gamma(2.0, 0.3, (c, d)), 0.0)
    class_motion = rng.normal(0, 1, (c, _CLASS_RANK, d)) * support[:, None, :] / np.sqrt(_CLASS_RANK)
    # Generator fidelity: per-dimension distortion of the pattern plus a little spill elsewhere.
    spill = np.where(rng.random((c, d)) < 0.03, rng.gamma(2.0, 0.1, (c, d)), 0.0)
    pseudo_patterns = class_patterns * rng.lognormal(0.0, 0.3, (c, d)) + spill
    style = np.where(rng.random(d) < 0.2, rng.gamma(1.0, 1.0, d), 0.0)
    arrays = (scenes, activity, class_patterns, class_motion, pseudo_patterns, style)
    return World(*(a.astype(np.float32) for a in arrays), class_names=CLASS_NAMES[:c])


# ----------------------------------------------------------------------------- one video


def _normal(rng: np.random.Generator, shape) -> np.ndarray:
    """Standard normal float32 samples (float32 halves the cost of the big draws)."""
    return rng.standard_normal(shape, dtype=np.float32)


def _ar1(rng: np.random.Generator, t: int, dim: int, rho: float) -> np.ndarray:
    """A stationary unit-variance AR(1) process, (t, dim)."""
    noise = _normal(rng, (t, dim))
    out = np.empty_like(noise)
    out[0] = noise[0]
    scale = np.sqrt(1 - rho**2)
    for i in range(1, t):
        out[i] = rho * out[i - 1] + scale * noise[i]
    return out


def video_features(world: World, rng: np.random.Generator, t: int, crops: int, *, pseudo: bool,
                   intensity: np.ndarray | None, cls: int) -> np.ndarray:
    """Unscaled (crops, t, D) float32 features of one video.

    `intensity` (t,) in [0, 1] is how much of each segment is anomalous (None: normal video).
    """
    dyn = _PSEUDO_DYNAMICS if pseudo else _REAL_DYNAMICS
    d = world.scenes.shape[1]
    scene = rng.integers(len(world.scenes))
    base = world.scenes[scene] * np.float32(rng.uniform(0.85, 1.15))  # lighting
    if dyn["drift"]:  # the camera wanders toward another view: viewpoint change
        other = world.scenes[rng.integers(len(world.scenes))]
        w = np.clip(np.cumsum(np.abs(rng.normal(0, dyn["drift"], t))), 0, 0.6).astype(np.float32)[:, None]
        base = (1 - w) * base + w * other
    x = base + np.float32(dyn["activity"]) * (_ar1(rng, t, world.activity.shape[0], dyn["rho"]) @ world.activity)
    if intensity is not None:
        pattern = world.pseudo_patterns[cls] if pseudo else world.class_patterns[cls]
        strength = (intensity[:, None] * rng.uniform(0.5, 1.0)).astype(np.float32)
        motion = _ar1(rng, t, _CLASS_RANK, dyn["rho"]) @ world.class_motion[cls]
        x = x + strength * (pattern + motion)
    if pseudo:
        x = x + np.float32(_STYLE_WEIGHT) * world.style
    x += np.float32(_NOISE) * _normal(rng, (t, d))
    # Crops see the same content with small multiplicative and additive jitter.
    jitter = 1 + np.float32(_CROP_JITTER) * _normal(rng, (crops, 1, d))
    out = x[None] * jitter
    out += np.float32(0.5 * _NOISE) * _normal(rng, (crops, t, d))
    return np.maximum(out, 0.0, out=out)


def _log_uniform_int(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    lo, hi = lo_hi
    return int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


def real_anomaly_intensity(rng: np.random.Generator, t: int) -> tuple[np.ndarray, np.ndarray]:
    """One or two short anomalous intervals (5-30% of the frames in all): segment intensity, frame labels."""
    frames = t * SEGMENT_FRAMES
    labels = np.zeros(frames, np.uint8)
    n_intervals = 1 + int(rng.random() < 0.3)
    total = rng.uniform(0.05, 0.30) * frames
    for _ in range(n_intervals):
        length = max(SEGMENT_FRAMES, int(total / n_intervals))
        start = int(rng.integers(0, frames - length + 1))
        labels[start : start + length] = 1
    return labels.reshape(t, SEGMENT_FRAMES).mean(1), labels


def pseudo_anomaly_intensity(rng: np.random.Generator, t: int) -> np.ndarray:
    """A generated anomalous clip: the event fills a contiguous 50-100% of it."""
    length = max(1, int(round(rng.uniform(0.5, 1.0) * t)))
    start = int(rng.integers(0, t - length + 1))
    intensity = np.zeros(t)
    intensity[start : start + length] = 1.0
    return intensity


# ----------------------------------------------------------------------------- the dataset


@dataclasses.dataclass(frozen=True)
class _VideoPlan:
    split: str
    kind: str  # normal | abnormal (real) | pseudo-abnormal | pseudo-normal
    index: int


def _make_video(world: World, spec: SyntheticSpec, seed: int, plan: _VideoPlan) -> VideoRecord:
    """The record of one planned video, with unscaled float32 features."""
    rng = np.random.default_rng([seed, _SPLIT_CODES[plan.split], _STREAM_CODES[plan.kind], plan.index])
    pseudo = plan.kind.startswith("pseudo")
    abnormal = plan.kind in ("abnormal", "pseudo-abnormal")
    cls = int(rng.integers(spec.num_classes))
    if pseudo:
        t = _log_uniform_int(rng, spec.pseudo_t)
    else:
        t = _log_uniform_int(rng, spec.test_t if plan.split == "test" else spec.real_train_t)
    intensity, frame_labels = None, None
    if abnormal and pseudo:
        intensity = pseudo_anomaly_intensity(rng, t)
    elif abnormal:
        intensity, frame_labels = real_anomaly_intensity(rng, t)
    if plan.split == "test" and frame_labels is None:
        frame_labels = np.zeros(t * SEGMENT_FRAMES, np.uint8)
    features = video_features(world, rng, t, spec.crops, pseudo=pseudo, intensity=intensity, cls=cls)
    prefix = {"normal": "real_normal", "abnormal": "real_abnormal", "pseudo-abnormal": "pseudo_abnormal",
              "pseudo-normal": "pseudo_normal"}[plan.kind]
    record = VideoRecord(
        id=f"{plan.split}_{prefix}_{plan.index:04d}",
        features=features,
        label=int(abnormal),
        source="pseudo" if pseudo else "real",
        stream={"pseudo-abnormal": "abnormal"}.get(plan.kind, plan.kind),
        anomaly_class=world.class_names[cls] if abnormal else "normal",
        num_frames=t * SEGMENT_FRAMES,
        frame_labels=frame_labels if plan.split == "test" else None,
    )
    return record


def calibration_scales(world: World, spec: SyntheticSpec, seed: int) -> dict[str, float]:
    """Per-source scales that give anomalous videos Table 1's mean segment norms exactly.

    real: all real abnormal videos (train and test) -> 20.52; pseudo: the pseudo-abnormal
    training videos -> 23.03; norms pooled over segments and crops. A first pass generates just
    these videos (each from its own random stream, so the second pass reproduces them).
    """
    populations = {
        "real": [p for split in ("train", "test") for p in _plans(spec, split) if p.kind == "abnormal"],
        "pseudo": [p for p in _plans(spec, "train") if p.kind == "pseudo-abnormal"],
    }
    targets = {"real": REAL_ANOMALY_NORM, "pseudo": PSEUDO_ANOMALY_NORM}
    scales = {}
    for source, plans in populations.items():
        total, count = 0.0, 0
        for plan in plans:
            segment_norms = np.linalg.norm(_make_video(world, spec, seed, plan).features, axis=-1)
            total, count = total + float(segment_norms.sum()), count + segment_norms.size
        scales[source] = targets[source] * count / total
    return scales


def _plans(spec: SyntheticSpec, split: str) -> list[_VideoPlan]:
    """The videos of one split, in the order they are written (streams grouped)."""
    if split == "train":
        kinds = [("normal", spec.train_normal), ("pseudo-abnormal", spec.train_pseudo_abnormal),
                 ("pseudo-normal", spec.train_pseudo_normal), ("abnormal", spec.train_real_abnormal)]
    else:
        kinds = [("abnormal", spec.test_abnormal), ("normal", spec.test_normal)]
    return [_VideoPlan(split, kind, i) for kind, n in kinds for i in range(n)]


def _check_size_and_splits(size: str, splits) -> tuple[str, ...]:
    if size not in SIZE_NAMES:
        raise ValueError(f"synthetic size is {size!r}, expected one of {sorted(SIZE_NAMES)}")
    splits = tuple(splits)
    if not splits or set(splits) - set(SPLITS):
        raise ValueError(f"synthetic splits are {splits!r}, expected some of {SPLITS}")
    return tuple(s for s in SPLITS if s in splits)


def generate(out_dir: os.PathLike | str, size: str = "default", seed: int = 0, *,
             records_per_file: int = 64, splits=SPLITS) -> dict:
    """Write the benchmark (train/ and test/ shard sets plus synthetic.json) to `out_dir`.

    Returns the info dict written to synthetic.json. `out_dir` must not hold a dataset yet.
    `splits` limits which of train/ and test/ are written.
    """
    splits = _check_size_and_splits(size, splits)
    if size == UCF:
        return generate_ucf(out_dir, seed, splits=splits, records_per_file=records_per_file)
    spec = SIZES[size]
    out_dir = pathlib.Path(out_dir)
    world = make_world(spec, seed)
    scales = calibration_scales(world, spec, seed)
    norm_sums: dict[str, list[float]] = {}  # "split/source/stream" -> [sum of segment norms, segments]
    for split in splits:
        with ShardWriter(out_dir / split, dtype="float16", records_per_file=records_per_file) as writer:
            for plan in tqdm(_plans(spec, split), desc=f"synthetic {size} {split}", unit="video"):
                record = _make_video(world, spec, seed, plan)
                record.features *= np.float32(scales[record.source])
                segment_norms = np.linalg.norm(record.features, axis=-1)
                sums = norm_sums.setdefault(f"{split}/{record.source}/{record.stream}", [0.0, 0])
                sums[0] += float(segment_norms.sum())
                sums[1] += segment_norms.size
                writer.write(record)
    info = {
        "generator_version": GENERATOR_VERSION,
        "size": size,
        "seed": seed,
        "splits": list(splits),
        "spec": dataclasses.asdict(spec),
        "class_names": list(world.class_names),
        "calibration_scales": scales,
        # Of the float32 features before the float16 cast; pooled over segments and crops.
        "mean_segment_norm": {k: total / n for k, (total, n) in sorted(norm_sums.items())},
    }
    atomic.write_json(out_dir / INFO_FILE, info, indent=1)
    return info

# ----------------------------------------------------------------------------- UCF-Crime-shaped data


def ucf_test_lengths() -> list[tuple[str, int]]:
    """(video, T) of UCF-Crime's 290 test videos in test-list order: the public I3D release's counts."""
    text = importlib.resources.files("pavad_jax.data").joinpath(UCF_TEST_SEGMENTS_FILE).read_text()
    return [(name, int(t)) for name, t in (line.split() for line in text.splitlines() if line.strip())]


def _ucf_class(video: str) -> str:
    """UCF-Crime's class from a video name (`Arson011_x264` -> Arson, `Normal_Videos_...` -> normal)."""
    if video.startswith("Normal"):
        return "normal"
    return re.match(r"[A-Za-z]+", video).group(0)


def _ucf_plans(split: str, seed: int, train_videos: dict[str, int]) -> list[tuple[str, str, int]]:
    """(id, anomaly class, T) of every video of a split, abnormal videos first (as the public lists)."""
    test = ucf_test_lengths()
    if split == "test":
        return [(name, _ucf_class(name), t) for name, t in test]
    rng = np.random.default_rng([seed, _SPLIT_CODES["train"]])
    classes = sorted({_ucf_class(name) for name, _ in test} - {"normal"})
    lengths = np.asarray([t for _, t in test])
    plans = []
    for stream in ("abnormal", "normal"):
        n = train_videos[stream]
        drawn_t = rng.choice(lengths, n)  # the empirical distribution of the test lengths
        drawn_class = rng.choice(classes, n) if stream == "abnormal" else ["normal"] * n
        plans += [(f"train_{stream}_{i:04d}", str(c), int(t)) for i, (c, t) in enumerate(zip(drawn_class, drawn_t))]
    return plans


def _uniform_float16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float16 uniform on [0.5, 1): random mantissa bits under a fixed exponent (~5x faster than a cast)."""
    bits = np.frombuffer(rng.bytes(2 * math.prod(shape)), np.uint16) & np.uint16(0x03FF)
    bits |= np.uint16(0x3800)
    return bits.view(np.float16).reshape(shape)


def generate_ucf(out_dir: os.PathLike | str, seed: int = 0, *, splits=SPLITS, records_per_file: int = 64,
                 crops: int = UCF_CROPS, feature_dim: int = UCF_FEATURE_DIM,
                 train_videos: dict[str, int] | None = None) -> dict:
    """Write UCF-Crime-shaped random features (size "ucf") to `out_dir`; returns the info dict.

    test/: the 290 test videos under their real names and segment counts, abnormal videos with
    one or two random anomalous intervals as frame labels; train/: 810 abnormal + 800 normal
    videos (`train_videos`) at lengths drawn from the test lengths, real source, no frame
    labels. Features are uniform on [0.5, 1) (mean segment norm ~24, near I3D's ~20) and carry
    no anomaly signal: for speed and memory only. Written one video at a time.
    """
    splits = _check_size_and_splits(UCF, splits)
    train_videos = dict(UCF_TRAIN_VIDEOS if train_videos is None else train_videos)
    out_dir = pathlib.Path(out_dir)
    counts, segments = {}, {}
    for split in splits:
        plans = _ucf_plans(split, seed, train_videos)
        with (ShardWriter(out_dir / split, dtype="float16", records_per_file=records_per_file) as writer,
              tqdm(total=sum(t for _, _, t in plans), desc=f"synthetic ucf {split}", unit="segment",
                   unit_scale=True) as bar):
            for index, (video, cls, t) in enumerate(plans):
                rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
                abnormal = cls != "normal"
                frame_labels = None
                if split == "test":
                    frame_labels = (real_anomaly_intensity(rng, t)[1] if abnormal
                                    else np.zeros(t * SEGMENT_FRAMES, np.uint8))
                writer.write(VideoRecord(
                    id=video, features=_uniform_float16(rng, (crops, t, feature_dim)), label=int(abnormal),
                    source="real", stream="abnormal" if abnormal else "normal", anomaly_class=cls,
                    num_frames=t * SEGMENT_FRAMES, frame_labels=frame_labels))
                bar.update(t)
        counts[split], segments[split] = len(plans), sum(t for _, _, t in plans)
    info = {"generator_version": GENERATOR_VERSION, "size": UCF, "seed": seed, "splits": list(splits),
            "purpose": "speed and memory only: random features with UCF-Crime's shapes, no anomaly signal",
            "crops": crops, "feature_dim": feature_dim, "videos": counts, "segments": segments}
    atomic.write_json(out_dir / INFO_FILE, info, indent=1)
    return info


def dataset_dir(root: os.PathLike | str, size: str = "default", seed: int = 0) -> pathlib.Path:
    """Where ensure_synthetic keeps the dataset of (size, seed) under `root`."""
    return pathlib.Path(root).expanduser() / f"synthetic-{size}-seed{seed}-v{GENERATOR_VERSION}"


def expected_videos(size: str) -> dict[str, int]:
    """Videos per split of a size."""
    if size == UCF:
        return {"train": sum(UCF_TRAIN_VIDEOS.values()), "test": len(ucf_test_lengths())}
    spec = SIZES[size]
    return {"train": spec.train_normal + spec.train_pseudo_abnormal + spec.train_pseudo_normal
            + spec.train_real_abnormal, "test": spec.test_normal + spec.test_abnormal}


def is_valid(path: os.PathLike | str, size: str, seed: int, splits=SPLITS) -> bool:
    """Whether `path` holds a complete, checksum-clean copy of the (size, seed) dataset's `splits`."""
    path = pathlib.Path(path)
    try:
        info = json.loads((path / INFO_FILE).read_text())
        if (info.get("generator_version"), info.get("size"), info.get("seed")) != (GENERATOR_VERSION, size, seed):
            return False
        if not set(splits) <= set(info.get("splits", SPLITS)):
            return False
        lengths = {split: len(ShardSet(path / split)) for split in splits}
    except (OSError, ValueError, ShardError):
        return False
    want = expected_videos(size)
    return all(lengths[split] == want[split] for split in splits)


def build(out_dir: os.PathLike | str, size: str = "default", seed: int = 0, *, force: bool = False,
          splits=SPLITS) -> bool:
    """Make `out_dir` hold the (size, seed) benchmark; False when a valid copy was already there.

    Generation goes to a temporary folder beside `out_dir`, renamed into place at the end, so
    neither a crash nor a concurrent builder ever leaves a partial dataset at `out_dir`.
    """
    splits = _check_size_and_splits(size, splits)
    final = pathlib.Path(out_dir).expanduser()
    if not force and is_valid(final, size, seed, splits):
        return False
    if final.exists() and any(final.iterdir()) and not (final / INFO_FILE).exists() and not force:
        raise FileExistsError(f"{final} exists and does not hold a synthetic dataset; choose another folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        generate(tmp, size, seed, splits=splits)
        if final.exists() and (force or not is_valid(final, size, seed, splits)):
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first; keep its (identical) copy
            if not is_valid(final, size, seed, splits):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return True


def ensure_synthetic(root: os.PathLike | str, size: str = "default", seed: int = 0) -> pathlib.Path:
    """The path of the (size, seed) benchmark under `root`, generated on first use (see `build`).

    An existing valid copy is reused; an invalid one (truncated, corrupt, older generator) is
    replaced.
    """
    path = dataset_dir(root, size, seed)
    build(path, size, seed)
    return path
