"""PyTorch generation side of PA-VAD; never imports JAX for its own logic."""
