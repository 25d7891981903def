"""Detector models in Flax NNX."""
