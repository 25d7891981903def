"""Rai et al.'s spatio-temporal pseudo-anomalies (papers/rai-spatio-temporal-pseudo-anomalies.md).

Spatial pseudo-anomalies: latent-diffusion inpainting of a masked region (`inpaint`, `masks`).
Temporal pseudo-anomalies: TV-L1 optical flow with patch mixup, lambda ~ Beta(0.4, 0.4)
(`flow`, `mixup`). CLIP frame features for the discriminator (generation/clip.py). `prepare`
writes everything the JAX side (`pavad_jax.occ`) reads; run it as
`python -m generation.rai.cli prepare --help`. This package never imports JAX.
"""
