"""Scores of Rai et al.'s detector: PSNR normalisation, aggregate, windows, micro-AUC."""
import numpy as np
import pytest

from pavad_jax.occ import scoring


def test_psnr_of_a_known_error():
    target = np.zeros((2, 4, 4, 3))
    output = target + np.array([0.1, 0.01])[:, None, None, None]  # MSE 1e-2 and 1e-4
    np.testing.assert_allclose(scoring.psnr(output, target), [20.0, 40.0])
    assert np.isfinite(scoring.psnr(target, target)).all()  # perfect reconstruction stays finite


def test_psnr_score_is_one_minus_minmax_and_ranks_low_psnr_highest():
    values = np.array([30.0, 20.0, 25.0, 30.0])
    score = scoring.psnr_score(values)
    np.testing.assert_allclose(score, [0.0, 1.0, 0.5, 0.0])
    assert np.argmax(score) == np.argmin(values)
    np.testing.assert_allclose(scoring.psnr_score(values * 3 + 7), score)  # invariant to affine PSNR shifts
    np.testing.assert_array_equal(scoring.minmax(np.full(5, 3.0)), np.zeros(5))  # constant video


def test_l2_score_is_minmax():
    np.testing.assert_allclose(scoring.l2_score(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])


def test_aggregate_weights_and_without_d():
    w1, w2, w3 = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.5, 0.5])
    np.testing.assert_allclose(scoring.aggregate(w1, w2, w3, (0.5, 0.3, 0.2)), [0.6, 0.4])
    np.testing.assert_allclose(scoring.aggregate(w1, w2, None, (0.5, 0.5, 0.0)), [0.5, 0.5])
    with pytest.raises(ValueError, match="omega_3"):
        scoring.aggregate(w1, w2, None, (0.4, 0.4, 0.2))


def test_windows_cover_the_video_and_score_the_ninth_frame():
    starts = scoring.window_starts(40, 16, 5)
    np.testing.assert_array_equal(starts, [0, 5, 10, 15, 20, 24])  # last window ends at the last frame
    frames = scoring.spread_to_frames(starts.astype(float), starts, 16, 40)
    assert frames.shape == (40,)
    assert frames[8] == 0 and frames[13] == 5 and frames[32] == 24  # window s scores frame s + 8
    assert frames[0] == 0 and frames[-1] == 24  # edges take the nearest scored value
    with pytest.raises(ValueError, match="shorter"):
        scoring.window_starts(10, 16, 1)


def test_micro_auc_concatenates_videos():
    labels = [np.array([0, 0, 1, 1]), np.array([0, 1])]
    scores = [np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.85, 0.95])]
    # each video alone is perfectly ranked (AUC 1), but video 2's normal frame (0.85) outscores
    # the 0.8 anomaly of video 1: one of the 9 pairs is misordered once videos are pooled
    assert scoring.micro_auc(labels, scores) == pytest.approx(8 / 9)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert scoring.micro_auc(labels, scores) == pytest.approx(
        sklearn_metrics.roc_auc_score(np.concatenate(labels), np.concatenate(scores)))
