"""Spatial pseudo-anomalies by inpainting (tiny random SD pipeline) and CLIP frame features (tiny CLIP)."""
import numpy as np
import pytest

from generation.clip import ClipEncoder
from generation.rai import inpaint, masks


@pytest.fixture(scope="module")
def pipe():
    return inpaint.tiny_inpaint_pipeline(seed=0)


def test_tiny_pipeline_is_a_9_channel_inpainting_unet(pipe):
    assert pipe.unet.config.in_channels == 9  # latents 4 + mask 1 + masked-image latents 4
    assert pipe.safety_checker is None
    assert inpaint.DEFAULT_INPAINT_MODEL.endswith("stable-diffusion-inpainting")


def test_inpainting_changes_only_the_masked_region(pipe):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    mask = masks.random_box_mask(32, 32, rng, 0.3, 0.5)
    out = inpaint.inpaint_frames(pipe, frames, mask, seed=1, steps=2, guidance_scale=1.0)
    assert out.shape == frames.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, ~mask], frames[:, ~mask])
    assert (out[:, mask] != frames[:, mask]).mean() > 0.5  # the masked pixels were regenerated
    again = inpaint.inpaint_frames(pipe, frames, mask, seed=1, steps=2, guidance_scale=1.0)
    np.testing.assert_array_equal(out, again)  # seeded: reproducible


def test_inpainting_grey_frames_and_bad_sizes(pipe):
    frames = np.full((1, 16, 16, 1), 128, np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[4:10, 4:10] = True
    out = inpaint.inpaint_frames(pipe, frames, mask, seed=0, steps=1, guidance_scale=1.0)
    assert out.shape == (1, 16, 16, 1)
    with pytest.raises(ValueError, match="divisible by 8"):
        inpaint.inpaint_frames(pipe, np.zeros((1, 12, 12, 3), np.uint8), np.ones((12, 12), bool), seed=0)
    with pytest.raises(ValueError, match="does not match"):
        inpaint.inpaint_frames(pipe, frames, np.ones((8, 8), bool), seed=0)


def test_inpainting_at_a_larger_working_resolution(pipe):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[2:9, 5:14] = True
    out = inpaint.inpaint_frames(pipe, frames, mask, seed=0, steps=1, guidance_scale=1.0, resolution=32)
    assert out.shape == frames.shape  # resized back to the frame size
    np.testing.assert_array_equal(out[:, ~mask], frames[:, ~mask])


def test_clip_features_are_unit_norm_and_distinguish_frames():
    encoder = ClipEncoder("tiny")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    features = encoder.encode_images(frames, normalize=True, batch_size=2)
    assert features.shape == (3, encoder.feature_dim) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(features[0], features[1])
    np.testing.assert_allclose(encoder.encode_images(frames[:1], normalize=True), features[:1], atol=1e-5)
    # Grey frames (Ped2) are repeated to three channels: the same embedding as the RGB grey frame.
    grey = frames[..., :1]
    np.testing.assert_allclose(encoder.encode_images(grey), encoder.encode_images(np.repeat(grey, 3, -1)), atol=1e-6)


def test_generation_side_does_not_import_jax():
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    code = "import sys, generation.rai.prepare; assert 'jax' not in sys.modules and 'flax' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(repo)))
    assert result.returncode == 0, result.stderr[-2000:]
