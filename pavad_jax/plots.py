"""Matplotlib for the JAX side's PNGs: a file-only backend and atomic saves."""
from __future__ import annotations

import json
import math
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


def read_train_terms(metrics_jsonl_path: str | pathlib.Path) -> dict[str, tuple[list[int], list[float]]]:
    """{term: (steps, values)} of every `train/<term>` scalar in a metrics.jsonl (a resumed run's rewrite of
    a step wins)."""
    by_term: dict[str, dict[int, float]] = {}
    for line in pathlib.Path(metrics_jsonl_path).read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        for key, value in row.items():
            if key.startswith("train/") and "step" in row:
                by_term.setdefault(key.removeprefix("train/"), {})[int(row["step"])] = float(value)
    return {term: (sorted(v), [v[s] for s in sorted(v)]) for term, v in by_term.items()}


def plot_loss_terms(metrics_jsonl_path: str | pathlib.Path, png_path: str | pathlib.Path) -> pathlib.Path:
    """Every logged training term against step, one panel each (their scales differ by orders of magnitude)."""
    terms = read_train_terms(metrics_jsonl_path)
    if not terms:
        raise ValueError(f"{metrics_jsonl_path}: no train/* scalars to plot")
    plt = pyplot()
    columns = min(4, len(terms))
    rows = math.ceil(len(terms) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.4 * rows), squeeze=False)
    for ax, (term, (steps, values)) in zip(axes.flat, sorted(terms.items())):
        ax.plot(steps, values, lw=1.2)
        ax.set_title(term, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    fig.suptitle(f"training terms against step ({metrics_jsonl_path})", fontsize=10)
    fig.tight_layout()
    png_path = pathlib.Path(png_path)
    save_figure(fig, png_path, dpi=100)
    return png_path
