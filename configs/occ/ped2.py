"""Rai et al. on UCSD Ped2, with the settings the paper states (papers/rai-spatio-temporal-pseudo-anomalies.md).

    pavad-occ train --config configs/occ/ped2.py --workdir runs/occ_ped2 --config.data.root=/data/UCSDped2
    pavad-occ eval --workdir runs/occ_ped2
    # segmentation masks instead of LaMa-style random masks (Table 4: 92.71% vs 91.18% for A^s alone):
    pavad-occ train --config configs/occ/ped2.py:segmentation --workdir runs/occ_ped2_seg \\
        --config.data.root=/data/UCSDped2 --config.generation.segmentation_dir=/data/ped2_masks

Expected (paper, Table 1): micro-AUC 93.53% with D, 93.52% without. ROOT is the UCSDped2 folder
of the official release: Train/TrainNNN/*.tif, Test/TestNNN/*.tif and the per-pixel ground
truth Test/TestNNN_gt/*.bmp (a frame is anomalous when its mask is non-empty).

From the paper: frames 256x256 RGB, clips of T=16; A^s and A^t are MemAE's conv-deconv 3D-CNN
(widths 96-128-256-256) trained from scratch with Adam, lr 1e-4, 25 epochs, batch 24 (12 per
GPU on 2 GPUs), p_s = 0.4, p_t = 0.5; temporal PAs by TV-L1 flow mixup with lambda ~ Beta(0.4, 0.4);
D on 512-d (Vi)CLIP frame features, SGD lr 0.02, momentum 0.9, weight decay 1e-3, batch 16,
20 epochs, labels 0 normal / 1 spatial PA; test windows of 16 frames scored at their 9th frame.

Not stated in the paper (our choices, marked "assumed" below): the inpainting model and its
sampler settings (the paper uses an off-the-shelf LDM without tuning; we use SD-inpainting's
defaults at 512x512 with an empty prompt), the training clip stride, the flow scaling, the
hidden width of D (its table is in the unavailable supplement) and eta (tuned per dataset in
the paper; equal weights here, tune with --config.score.eta).
"""
import ml_collections

TRAIN_VIDEOS = 16
TEST_VIDEOS = 12


def get_config(arg=None):
    """Ped2 settings; arg 'segmentation' switches to segmentation masks (needs generation.segmentation_dir)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    root = "{root}"  # pavad-occ fills in config.data.root when it writes the generation spec
    c.data = ml_collections.ConfigDict(dict(
        root="",
        frame_size=256, channels=3, clip_len=16,
        clip_stride=16,  # assumed: one pseudo-anomalous version per non-overlapping training clip
        flow_scale=0.25,  # assumed: flows in units of 4 pixels
        train_videos=[dict(id=f"Train{i:03d}", path=f"{root}/Train/Train{i:03d}")
                      for i in range(1, TRAIN_VIDEOS + 1)],
        test_videos=[dict(id=f"Test{i:03d}", path=f"{root}/Test/Test{i:03d}", labels=f"{root}/Test/Test{i:03d}_gt")
                     for i in range(1, TEST_VIDEOS + 1)],
    ))
    c.generation = ml_collections.ConfigDict(dict(
        mask_type="segmentation" if arg == "segmentation" else "lama", segmentation_dir="",
        inpaint_model="stable-diffusion-v1-5/stable-diffusion-inpainting",  # assumed (any diffusers inpainting model)
        inpaint_steps=50, guidance_scale=7.5, prompt="", inpaint_resolution=512,  # assumed: the pipeline's defaults
        flow_method="tvl1", mixup_alpha=0.4,
        clip_model="openai/clip-vit-base-patch16",  # ViFi-CLIP's backbone; a converted ViFi-CLIP folder loads too
        seed=0, device="cuda",
    ))
    c.spatial = ml_collections.ConfigDict(dict(widths=(96, 128, 256, 256), upsample="transpose", p_pseudo=0.4,
                                               lr=1e-4, epochs=25, batch_size=24))
    c.temporal = ml_collections.ConfigDict(dict(widths=(96, 128, 256, 256), upsample="transpose", p_pseudo=0.5,
                                                lr=1e-4, epochs=25, batch_size=24))
    c.disc = ml_collections.ConfigDict(dict(hidden=(256,),  # assumed
                                            lr=0.02, momentum=0.9, weight_decay=1e-3, epochs=20, batch_size=16))
    c.score = ml_collections.ConfigDict(dict(eta=(1 / 3, 1 / 3, 1 / 3),  # assumed: tuned per dataset in the paper
                                             eval_stride=1, batch_size=8))
    c.checkpoint_every_epochs = 1
    return c
