"""Rai et al.'s one-class detector: spatial and temporal 3D-CNN autoencoders trained against
spatio-temporal pseudo-anomalies, plus a CLIP-feature discriminator (`pavad-occ`).

The pseudo-anomalies are made on the PyTorch side (generation/rai); this package only reads
the prepared arrays and shards, and never imports torch.
"""
