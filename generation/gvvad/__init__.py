"""GV-VAD generation side: descriptions -> text-to-video -> CLIP filter -> CLIP segment features.

Steps (each a module with ``run_<step>(...)`` and ``register(subparsers)``):
describe (paired descriptions from four elements), t2v (Wan / CogVideoX through diffusers),
filter (CLIP text-video similarity threshold), features (CLIP features per 16-frame segment,
written as feature shards) and run (all four from one config). See docs/gvvad.md.
"""
