"""Matplotlib for the JAX side's PNGs: a file-only backend and atomic saves."""
from __future__ import annotations

import pathlib

from pavad_jax import atomic


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display here or on clusters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: pathlib.Path, dpi: int) -> None:
    """Write `fig` as a PNG atomically (a reader never sees half a plot) and close it."""
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
