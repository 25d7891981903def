"""PA-VAD pseudo-anomaly generation for UCF-Crime with the paper's settings (Sec. 4.1, S1.3).

  pavad-gen run --config configs/generation/ucf.py --workdir runs/gen_ucf \
      --config.select.videos=/data/ucf_crime/Training-Normal-Videos \
      --config.extract.real_normal="('/data/ucf_crime/Training-Normal-Videos',)"
  pavad-gen run --config configs/generation/ucf.py:offload ...   # CPU offload + VAE tiling

Needs GPU workers and the real weights (open_clip ViT-B/32, Qwen3-VL 30B-A3B, Wan 2.2 I2V
A14B: about 96 GB of GPU memory per worker without offload, ~9.5 min per clip, S3). At scale,
run each step as an array job (launch/gen_slurm_array.sh, launch/gen_k8s_indexed_job.yaml)
with `--steps STEP`.

Expected: 13 classes x 20 = 260 pseudo-abnormal clips and 80 pseudo-normal clips (Sec. 4.1),
81 frames at 832x480, 16 fps, guidance (6.5, 4.5) (S1.3); features/train holds real normal,
abnormal (pseudo) and pseudo-normal streams. UCF-Crime normal videos carry no scene names, so
scene balancing is off. Test split: extract.test_videos = the 290 test videos and
extract.test_labels = UCF_Annotation.txt (temporal annotations), or `pavad-data import`.
Features: I3D under protocol urdmu, the preprocessing of the public 1024-d 10-crop release
(docs/features.md), so the pseudo clips' features match the release's real ones.
"""
import ml_collections

PAPER_VLM = "Qwen/Qwen3-VL-30B-A3B-Instruct"  # "Qwen3 30B-A3B" in Sec. 4.1


def get_config(arg=None):
    variants = set(filter(None, (arg or "").split(",")))
    if variants - {"offload"}:
        raise ValueError(f"ucf: unknown variants {sorted(variants - {'offload'})} (known: offload)")
    config = ml_collections.ConfigDict()
    config.select = dict(
        videos="", classes="ucf", clip_backend="open_clip", clip_model="ViT-B-32:openai",
        top_k=20, normal_k=80, lam=0.5, neg_aggregate="mean", frame_step=16, frames_per_video=8,
        scene_alpha=None, scene_quota=0, device="cuda")
    config.refine = dict(vlm_model=PAPER_VLM, refine=True, max_new_tokens=77, device="cuda",
                         dtype="bfloat16")
    config.synthesize = dict(
        model="Wan-AI/Wan2.2-I2V-A14B-Diffusers", height=480, width=832, num_frames=81, fps=16,
        steps=25, guidance=(6.5, 4.5), seed=0, device="cuda", dtype="bfloat16",
        cpu_offload="offload" in variants, vae_tiling="offload" in variants)
    config.extract = dict(
        real_normal=("",), test_videos=(), test_labels=None, features="i3d", protocol="urdmu",
        crops="10crop", device="cuda", dtype="float16")
    return ml_collections.ConfigDict(config)
