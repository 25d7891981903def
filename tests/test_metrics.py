"""The UR-DMU evaluation metrics against a direct sklearn computation."""
import numpy as np
import pytest
from sklearn import metrics as skm

from pavad_jax import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(5000) < 0.2).astype(np.float32)
    # Rounded scores create many ties, the case where hand-written AUCs usually go wrong.
    scores = np.round(rng.random(5000) * 0.5 + 0.4 * labels, 2)
    assert metrics.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    assert metrics.pr_auc_trapezoid(labels, scores) == pytest.approx(skm.auc(recall, precision), abs=1e-12)
    assert metrics.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12)


def test_video_metrics_concatenates_frames_in_order():
    rng = np.random.default_rng(3)
    seg = [rng.random(t) for t in (5, 9, 3)]
    labels = [np.zeros(80), np.r_[np.zeros(64), np.ones(80)], np.ones(48)]
    got = metrics.video_metrics(seg, labels, ["normal", "Fight", "Theft"])
    frames = np.concatenate([np.repeat(s, 16) for s in seg])
    y = np.concatenate(labels)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, frames))
    assert set(got["per_class_auc"]) == {"Fight", "Theft"}
    theft = np.concatenate([np.repeat(seg[0], 16), np.repeat(seg[2], 16)])
    assert got["per_class_auc"]["Theft"] == pytest.approx(
        skm.roc_auc_score(np.r_[labels[0], labels[2]], theft))


def test_single_class_ground_truth_is_an_error():
    with pytest.raises(ValueError, match="both normal and abnormal"):
        metrics.roc_auc(np.zeros(10), np.arange(10))
