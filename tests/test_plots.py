"""The loss-term plot a run ends with."""
import json

import numpy as np
import pytest

from pavad_jax import plots


def test_plot_loss_terms_draws_every_train_term(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "train/total": 1.0 / s, "train/upd": 2.0 * s} for s in (10, 20, 30)]
    rows += [{"step": 20, "train/total": 0.25, "train/upd": 40.0},  # a resumed run rewrites step 20
             {"step": 30, "eval/auc": 0.9}, {"hparams": {"x": "1"}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    terms = plots.read_train_terms(path)
    assert sorted(terms) == ["total", "upd"]  # eval/ scalars and hparams are not training terms
    assert terms["total"] == ([10, 20, 30], [0.1, 0.25, 1.0 / 30])
    png = plots.plot_loss_terms(path, tmp_path / "loss_terms.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = plots.pyplot().imread(png)
    assert image.shape[1] > image.shape[0] and np.std(image) > 0  # two panels side by side, not blank
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"step": 1, "eval/auc": 0.5}) + "\n")
    with pytest.raises(ValueError, match="no train/"):
        plots.plot_loss_terms(empty, tmp_path / "x.png")
