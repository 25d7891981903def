"""Frame anomaly scores of Rai et al. (section 4.2) and the micro-AUC.

Each test video is cut into windows of T frames (stride eval_stride); a window's score goes to
its (T//2 + 1)-th frame (the 9th of 16, as in LNTRA), and frames between or beyond the scored
ones take linearly interpolated / edge values. Per video:
  omega_1 = 1 - minmax(PSNR(x_t, A^s(x)_t))     reconstruction quality (low PSNR = anomalous)
  omega_2 = minmax(||phi_t - A^t(phi)_t||^2 / Pi) temporal irregularity
  omega_3 = sigmoid(D(clip_t))                 semantic inconsistency
  omega_agg = eta_1 omega_1 + eta_2 omega_2 + eta_3 omega_3   (eq. 6)
The micro-AUC concatenates the frame scores and labels of all test videos.
"""
from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pavad_jax import metrics
from pavad_jax.occ import data as occ_data
from pavad_jax.occ import train as occ_train

SCORE_NAMES = ("psnr", "l2", "disc", "aggregate")


def psnr(output: np.ndarray, target: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """Per-frame PSNR (dB) of (..., H, W, C) arrays with values in [0, peak]; the MSE is floored at 1e-10."""
    mse = np.mean(np.square(np.asarray(output, np.float64) - target), axis=(-3, -2, -1))
    return 10.0 * np.log10(peak**2 / np.maximum(mse, 1e-10))


def minmax(values: np.ndarray) -> np.ndarray:
    """(v - min) / (max - min) over one video; all zeros when the video's values are constant."""
    values = np.asarray(values, np.float64)
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def psnr_score(psnr_values: np.ndarray) -> np.ndarray:
    """omega_1: normalised PSNR turned into an anomaly score (1 = worst reconstructed frame)."""
    return 1.0 - minmax(psnr_values)


def l2_score(l2_values: np.ndarray) -> np.ndarray:
    """omega_2: normalised flow reconstruction error."""
    return minmax(l2_values)


def aggregate(omega_1: np.ndarray, omega_2: np.ndarray, omega_3: np.ndarray | None,
              eta: Sequence[float]) -> np.ndarray:
    """omega_agg of eq. (6); with eta_3 = 0 (or no D) it is the 'w/o D' variant."""
    eta_1, eta_2, eta_3 = eta
    score = eta_1 * np.asarray(omega_1) + eta_2 * np.asarray(omega_2)
    if eta_3:
        if omega_3 is None:
            raise ValueError("eta_3 > 0 needs discriminator scores (omega_3)")
        score = score + eta_3 * np.asarray(omega_3)
    return score


def window_starts(num_frames: int, clip_len: int, stride: int) -> np.ndarray:
    """Starts of the evaluation windows; the last window always ends at the last frame."""
    if num_frames < clip_len:
        raise ValueError(f"a test video of {num_frames} frames is shorter than a window of {clip_len}")
    starts = np.arange(0, num_frames - clip_len + 1, stride)
    return starts if starts[-1] == num_frames - clip_len else np.append(starts, num_frames - clip_len)


def spread_to_frames(values: np.ndarray, starts: np.ndarray, clip_len: int, num_frames: int) -> np.ndarray:
    """Frame values from window values scored at frame start + clip_len // 2."""
    return np.interp(np.arange(num_frames), starts + clip_len // 2, values)


def window_errors(apply: Callable[[jax.Array], jax.Array], clip_len: int, batch_size: int,
                  video: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(PSNR, MSE) of the centre frame of each window, from apply(windows) -> reconstructions.

    video is float32 network input (N, H, W, C); windows are cut on the host in batches.
    """
    centre = clip_len // 2
    psnrs, mses = [], []
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        windows = np.stack([video[s:s + clip_len] for s in chunk])
        pad = batch_size - len(chunk)  # constant batch shape: one compilation for every video
        padded = np.concatenate([windows, np.repeat(windows[-1:], pad, 0)]) if pad else windows
        output = np.asarray(apply(jnp.asarray(padded)))[:len(chunk), centre]
        target = windows[:, centre]
        psnrs.append(psnr(output, target))
        mses.append(np.mean(np.square(output - target), axis=(1, 2, 3)))
    return np.concatenate(psnrs), np.concatenate(mses)


def micro_auc(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> float:
    """ROC AUC of the frame scores of all videos concatenated (micro-AUC)."""
    return metrics.roc_auc(np.concatenate(labels), np.concatenate(scores))


def score_videos(config, workdir, data_dir) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Per-video frame scores (psnr, l2, omega_1..3, aggregate, labels) and the micro-AUCs."""
    workdir, data_dir = pathlib.Path(workdir), pathlib.Path(data_dir)
    videos = occ_data.load_test(data_dir)
    clip_len, stride, batch = config.data.clip_len, config.score.eval_stride, config.score.batch_size
    eta = tuple(config.score.eta)

    def restored(name, model):
        model = occ_train.restore_model(occ_train.model_dir(workdir, name), model)
        model.eval()
        return nnx.jit(lambda m, x: m(x)), model

    spatial_fn, spatial = restored("spatial", occ_train.build_autoencoder(config, "spatial", 0))
    temporal_fn, temporal = restored("temporal", occ_train.build_autoencoder(config, "temporal", 0))
    disc = None
    if eta[2]:
        disc_fn, disc = restored("disc", occ_train.build_discriminator(config, videos[0].features.shape[1], 0))
    per_video = {}
    for video in videos:
        n = len(video.frames)
        starts = window_starts(n, clip_len, stride)
        frames = video.frames.astype(np.float32) / 255.0
        flows = video.flows.astype(np.float32) * config.data.flow_scale
        frame_psnr, _ = window_errors(lambda x: spatial_fn(spatial, x), clip_len, batch, frames, starts)
        _, flow_l2 = window_errors(lambda x: temporal_fn(temporal, x), clip_len, batch, flows, starts)
        frame_psnr = spread_to_frames(frame_psnr, starts, clip_len, n)
        flow_l2 = spread_to_frames(flow_l2, starts, clip_len, n)
        scores = {"psnr": frame_psnr, "l2": flow_l2, "omega_1": psnr_score(frame_psnr),
                  "omega_2": l2_score(flow_l2), "labels": video.labels}
        if disc is not None:
            scores["omega_3"] = np.asarray(jax.nn.sigmoid(disc_fn(disc, jnp.asarray(video.features))), np.float64)
        scores["aggregate"] = aggregate(scores["omega_1"], scores["omega_2"], scores.get("omega_3"), eta)
        per_video[video.id] = scores
    labels = [s["labels"] for s in per_video.values()]
    names = ["omega_1", "omega_2"] + (["omega_3"] if disc is not None else []) + ["aggregate"]
    aucs = {f"auc_{name}": micro_auc(labels, [s[name] for s in per_video.values()]) for name in names}
    summary = {"auc": aucs["auc_aggregate"], **aucs, "eta": list(eta), "videos": len(per_video),
               "frames": int(sum(len(l) for l in labels)), "anomalous_frames": int(sum(l.sum() for l in labels))}
    return per_video, summary
