"""PA-VAD pseudo-anomaly generation for ShanghaiTech with the paper's settings (Sec. 4.1, S1.3).

  pavad-gen run --config configs/generation/sht.py --workdir runs/gen_sht \
      --config.select.videos=/data/shanghaitech/training/videos \
      --config.extract.real_normal="('/data/shanghaitech/training/videos',)"
  pavad-gen run --config configs/generation/sht.py:offload ...   # CPU offload + VAE tiling

Needs GPU workers and the real weights (open_clip ViT-B/32, Qwen3-VL 30B-A3B, Wan 2.2 I2V
A14B: about 96 GB of GPU memory per worker without offload, ~9.5 min per clip, S3). At scale,
run each step as an array job (launch/gen_slurm_array.sh, launch/gen_k8s_indexed_job.yaml)
with `--steps STEP`.

Expected: 13 classes x 10 = 130 pseudo-abnormal clips (the paper lists 14 SHT categories and
140 clips; the split's anomaly.list has 13) and 50 pseudo-normal clips, 81 frames at 832x480,
16 fps; features/train holds real normal, abnormal (pseudo) and pseudo-normal streams. The
test split is the Zhong et al. split with frame labels: import it with `pavad-data import`, or
give extract.test_videos and extract.test_labels (a JSON {video: per-frame 0/1 list}, or the
test_frame_mask/ folder). Features: 1024-d I3D under protocol urdmu, as the UCF-Crime release;
ShanghaiTech's common public features (RTFM's) come from a ResNet-50 I3D (2048-d), a different
network, so extract the real videos here too instead of mixing them (docs/features.md).
"""
import ml_collections

PAPER_VLM = "Qwen/Qwen3-VL-30B-A3B-Instruct"  # "Qwen3 30B-A3B" in Sec. 4.1


def get_config(arg=None):
    variants = set(filter(None, (arg or "").split(",")))
    if variants - {"offload"}:
        raise ValueError(f"sht: unknown variants {sorted(variants - {'offload'})} (known: offload)")
    config = ml_collections.ConfigDict()
    config.select = dict(
        videos="", classes="sht", clip_backend="open_clip", clip_model="ViT-B-32:openai",
        top_k=10, normal_k=50, lam=0.5, neg_aggregate="mean", frame_step=16, frames_per_video=8,
        scene_alpha=0.5, scene_quota=1, scene_regex=r"^(\d+)_", device="cuda")
    config.refine = dict(vlm_model=PAPER_VLM, refine=True, max_new_tokens=77, device="cuda",
                         dtype="bfloat16")
    config.synthesize = dict(
        model="Wan-AI/Wan2.2-I2V-A14B-Diffusers", height=480, width=832, num_frames=81, fps=16,
        steps=25, guidance=(3.5, 3.5), seed=0, device="cuda", dtype="bfloat16",
        cpu_offload="offload" in variants, vae_tiling="offload" in variants)
    config.extract = dict(
        real_normal=("",), test_videos=(), test_labels=None, features="i3d", protocol="urdmu",
        crops="10crop", device="cuda", dtype="float16")
    return ml_collections.ConfigDict(config)
