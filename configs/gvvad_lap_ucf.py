"""GV-VAD (LAP) on UCF-Crime, as the official code trains it (Table I: 89.3 AUC; Tables II, III).

  pavad-gen gvvad --config configs/generation/gvvad_ucf.py --workdir gen/gvvad_ucf   # + captions
  pavad-train --config configs/gvvad_lap_ucf.py --workdir runs/gvvad_lap --config.data.dir=gen/gvvad_ucf/dataset
  pavad-train --config configs/gvvad_lap_ucf.py:runlocal --workdir /tmp/run --config.data.dir=/tmp/gvvad_tiny/dataset

Sumutan/GV-VAD runGV.sh (main_difLR.py --feature-group both --fusion concat --emb_dim 768
--aggregate_text --extra_loss --VLR 0.5 --Learnable_VLR): LAP on CLIP-L features (D = 768) and
per-segment caption embeddings (E = 768, shard field caption_embedding), its prompt bank at
DATASET/prompt_bank.npy (model.prompt_bank, relative to data.dir; pavad-gen gvvad writes it),
T = 64, 10 crops, 32 + 32 videos a step, Adam lr 1e-3, weight decay 5e-3, 1000 iterations,
evaluated every 5 steps after step 50, seeds 0, 228, 3407. All of RTFM's loss terms
(--extra_loss) plus the pseudo-anomaly (β = 1e-3) and prompt triplet (γ = 0.1, applied twice as
the code does) losses. SSLS in the code's form with a learnable raw λ initialised at 0.5
(loss.gv.learnable; it takes Adam's weight decay too). `:fixed` keeps λ fixed; `:paper` uses
Eq. 6 per sample. `:runlocal`: a narrow LAP on tiny data (D = E = 16), seconds on a CPU.
"""
import importlib.util
import pathlib

from pavad_jax.config_base import parse_variants

_spec = importlib.util.spec_from_file_location("gvvad_rtfm_ucf", pathlib.Path(__file__).with_name("gvvad_rtfm_ucf.py"))
_rtfm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rtfm)


def get_config(arg=None):
    words = parse_variants(arg, {"runlocal", "paper", "fixed", *_rtfm.SEEDS})
    config = _rtfm.gvvad_config("lap", words)
    config.model.text_dim = 768
    config.model.prompt_bank = "prompt_bank.npy"  # under data.dir
    config.loss.gv.learnable = "fixed" not in words
    if "runlocal" in words:
        config.model.text_dim = 16
    return config
