"""PA-VAD in JAX/Flax. Importing this package imports neither JAX nor torch."""
__version__ = "0.1.0"
