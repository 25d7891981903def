"""GV-VAD generation side on UCF-Crime, with the paper's settings (papers/gv-vad.md, Sec. III-A).

  pavad-gen gvvad --config configs/generation/gvvad_ucf.py --workdir gen/gvvad_ucf
  pavad-gen gvvad --config configs/generation/gvvad_ucf.py:wan --workdir gen/gvvad_ucf_wan
  pavad-train --config configs/gvvad_ucf.py --workdir runs/gvvad_ucf --config.data.dir=gen/gvvad_ucf/dataset

Paper settings kept: 300 abnormal + 300 normal descriptions from the four elements of the 13
UCF-Crime classes, CogVideoX as the text-to-video model, CLIP-L (ViT-L/14, 768-d) features per
16-frame segment, CLIP text-video filtering. Substitutions: GPT-4o (not available through
transformers) is replaced by an open instruct model; CogVideoX-5b's size is the public default
(720x480, 49 frames at 8 fps), which the paper does not state; the filter threshold (0.22,
mean frame-text cosine of CLIP-L) is ours, the paper does not publish one. Variant `wan`
generates with Wan 2.2 T2V A14B (480x832, 81 frames at 16 fps) instead.

Real videos: by default only the synthetic part is built. To extract the UCF-Crime videos'
CLIP-L features with the same encoder (train: 1610 videos of UCF_Train.list; test: the 290 of
UCF_Annotation.txt, with their frame labels), add
  --config.real.videos=ucf-crime --config.real.video_root=/data/UCF_Crime \
  --config.real.annotations_dir=shared/data/vad_annotations/ucf
(or give real.videos a JSON-lines list of your own; see docs/gvvad.md). Otherwise put real
CLIP-L features imported with `pavad-data` beside dataset/train/gvvad-synthetic: readers find
every shard set below train/.
Cost: ~600 videos of CogVideoX-5b at 50 steps, about 3-4 GPU-minutes each on an H100.
"""
import ml_collections


def get_config(arg=None):
    variants = set(filter(None, (arg or "").split(",")))
    unknown = variants - {"wan"}
    if unknown:
        raise ValueError(f"gvvad_ucf: unknown variants {sorted(unknown)} (known: wan)")
    config = ml_collections.ConfigDict()
    config.elements = "ucf_crime"
    config.describe = ml_collections.ConfigDict(dict(
        num_pairs=300, seed=0, llm="Qwen/Qwen2.5-7B-Instruct", device="cuda",
        max_new_tokens=80, batch_size=16))
    if "wan" in variants:
        t2v = dict(backend="wan", model="Wan-AI/Wan2.2-T2V-A14B-Diffusers", height=480, width=832,
                   num_frames=81, fps=16, steps=40, guidance_scale=4.0, max_sequence_length=512)
    else:
        t2v = dict(backend="cogvideox", model="THUDM/CogVideoX-5b", height=480, width=720,
                   num_frames=49, fps=8, steps=50, guidance_scale=6.0, negative_prompt="",
                   max_sequence_length=226)
    config.t2v = ml_collections.ConfigDict(dict(t2v, seed=0, device="cuda", dtype="bfloat16", offload=False))
    config.filter = ml_collections.ConfigDict(dict(
        threshold=0.22, clip_model="openai/clip-vit-large-patch14", clip_backend="transformers",
        num_samples=8, device="cuda"))
    config.features = ml_collections.ConfigDict(dict(
        clip_model="openai/clip-vit-large-patch14", device="cuda", batch_size=8, dtype="float16"))
    config.real = ml_collections.ConfigDict(dict(videos="", video_root="", annotations_dir=""))
    # LAP's captions: every segment captioned by a VLM, embedded by CLIP-L's text encoder (E = 768).
    config.captions = ml_collections.ConfigDict(dict(
        enabled=True, vlm_model="Qwen/Qwen2.5-VL-7B-Instruct", clip_model="openai/clip-vit-large-patch14",
        max_new_tokens=32, device="cuda", dtype="bfloat16"))
    return config
