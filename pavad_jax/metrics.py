"""Frame-level anomaly metrics of the UR-DMU protocol, in numpy.

Written out (rather than calling sklearn) so the definitions are visible and the two "AP"s in
the literature are named apart: UR-DMU's "AP" is the trapezoidal area under the
precision-recall curve (sklearn's ``auc(recall, precision)``), while ``average_precision`` is
the step-wise sum of sklearn's ``average_precision_score``. Tests check both against sklearn.
"""
from __future__ import annotations

import numpy as np

SEGMENT_FRAMES = 16  # I3D features: one segment per 16 frames


def _clf_curve(labels: np.ndarray, scores: np.ndarray):
    """False/true positive counts at each distinct threshold, scores descending."""
    labels = np.asarray(labels, np.float64).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), labels.size - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = 1 + last_of_tie - tps
    return fps, tps


def _check_both_classes(labels: np.ndarray) -> None:
    positives = int(np.sum(labels))
    if positives == 0 or positives == labels.size:
        raise ValueError("AUC needs both normal and abnormal frames in the ground truth")


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties handled as sklearn's roc_auc_score does)."""
    _check_both_classes(np.asarray(labels))
    fpr, tpr = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold."""
    fps, tps = _clf_curve(labels, scores)
    return np.r_[0.0, fps] / fps[-1], np.r_[0.0, tps] / tps[-1]


def _precision_recall(labels, scores):
    fps, tps = _clf_curve(labels, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    # From recall 0 upwards, with sklearn's closing point (recall 0, precision 1).
    return np.r_[1.0, precision], np.r_[0.0, recall]


def pr_auc_trapezoid(labels, scores) -> float:
    """UR-DMU's "AP": trapezoidal area under the precision-recall curve."""
    labels = np.asarray(labels)
    _check_both_classes(labels)
    precision, recall = _precision_recall(labels, scores)
    return float(np.trapezoid(precision, recall))


def average_precision(labels, scores) -> float:
    """Average precision as sklearn defines it: sum over thresholds of ΔRecall · Precision."""
    labels = np.asarray(labels)
    _check_both_classes(labels)
    precision, recall = _precision_recall(labels, scores)
    return float(np.sum(np.diff(recall) * precision[1:]))


def frame_scores(segment_scores: np.ndarray) -> np.ndarray:
    """Repeat each segment score once per frame, as the UR-DMU evaluation does."""
    return np.repeat(np.asarray(segment_scores, np.float64), SEGMENT_FRAMES)


def video_metrics(
    segment_scores: list[np.ndarray],
    frame_labels: list[np.ndarray],
    anomaly_classes: list[str] | None = None,
) -> dict:
    """AUC, both APs and per-class AUC over the concatenated frames of all test videos.

    ``frame_labels[i]`` must already be aligned to ``16 * len(segment_scores[i])`` frames.
    Per-class AUC uses every normal video against the abnormal videos of one class (the usual
    per-class protocol on UCF-Crime).
    """
    scores = [frame_scores(s) for s in segment_scores]
    for i, (s, y) in enumerate(zip(scores, frame_labels)):
        if s.shape != np.shape(y):
            raise ValueError(f"test video {i}: {s.size} frame scores but {np.size(y)} frame labels")
    all_scores, all_labels = np.concatenate(scores), np.concatenate(frame_labels)
    result = {
        "auc": roc_auc(all_labels, all_scores),
        "ap_pr_trapezoid": pr_auc_trapezoid(all_labels, all_scores),
        "average_precision": average_precision(all_labels, all_scores),
        "frames": int(all_labels.size),
        "abnormal_frames": int(np.sum(all_labels)),
    }
    if anomaly_classes is not None:
        classes = sorted({c for c in anomaly_classes if c != "normal"})
        normal = [i for i, c in enumerate(anomaly_classes) if c == "normal"]
        per_class = {}
        for name in classes:
            chosen = normal + [i for i, c in enumerate(anomaly_classes) if c == name]
            y = np.concatenate([frame_labels[i] for i in chosen])
            if 0 < y.sum() < y.size:
                per_class[name] = roc_auc(y, np.concatenate([scores[i] for i in chosen]))
        if per_class:
            result["per_class_auc"] = per_class
    return result
