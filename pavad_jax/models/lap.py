"""LAP (Tao et al. 2024, "Learn suspected anomalies from event prompts"), GV-VAD's detector, in Flax NNX,
as GV-VAD's official code computes it (Sumutan/GV-VAD model_tcc_triplet_v2_oral.py, train_tcc_difLR.py).

Two branches, each RTFM's multi-scale temporal network: the visual features (per crop) and the
per-segment caption embeddings (the same for every crop), concatenated, then RTFM's scoring
head, top-k magnitude selection and loss. On top, two prompt losses use a bank of anomaly event
prompts embedded with CLIP's text encoder (an input array, `prompt_bank`, not trained):
- pseudo anomalies: a segment of an abnormal video whose caption's largest cosine similarity
  to the prompts exceeds mean + std (over the abnormal batch) is labelled c = 1; the loss is
  BCE(1 - s, c) on the crop-averaged scores (the code's form, see quirks.pseudo_anomaly_inverted);
- prompt triplet: the P lowest-scored normal segments (anchors), the P lowest-scored abnormal
  segments (positives) and the P highest-scored pseudo-anomalous segments (negatives), P the
  bank size, their fused features of all crops concatenated, in a margin-1 triplet loss.
With prompts = 0 the model is TEVAD as GV-VAD runs it (no prompt losses).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pavad_jax.losses import bce, triplet_margin
from pavad_jax.models.defaults_lap import lap_config
from pavad_jax.models.rtfm import (MultiScaleTemporalNetwork, ScoreHead, apply_dropout, apply_ssls, check_halves,
                                   chunked_scores,
                                   draw_keep_masks, learnable_gv_lambda, magnitude_selection, resolve_weights,
                                   rtfm_terms, ssls_setup, weighted_mean)
from pavad_jax.models.urdmu import crop_mean, flatten_crops

TEXT_FIELD = "caption_embedding"


class PromptBank(nnx.Variable):
    """(prompts, text_dim) embeddings of the anomaly event prompts: an input of the model, not trained."""


def prompt_similarity_labels(bank: jax.Array, text: jax.Array, eps: float = 1e-8) -> jax.Array:
    """The code's calculate_abn: (N, T, E) captions -> (N, T) pseudo-anomaly labels in {0, 1}.

    Per segment the largest cosine similarity to a prompt; labelled 1 above mean + std of those
    similarities over all N * T segments (std unbiased, as torch.std_mean).
    """
    norms = jnp.linalg.norm(text, axis=-1)[..., None] * jnp.linalg.norm(bank, axis=-1)
    similarity = (jnp.einsum("nte,pe->ntp", text, bank) / jnp.maximum(norms, eps)).max(-1)
    threshold = similarity.mean() + jnp.std(similarity, ddof=1)
    return jax.lax.stop_gradient((similarity > threshold).astype(jnp.float32))


def triplet_selection(features: jax.Array, scores: jax.Array, pseudo: jax.Array, crops: int, count: int
                      ) -> dict[str, jax.Array]:
    """The code's calculate_triplet on fused features (B*crops, T, F), scores (B, T), labels (half, T).

    Segment i of each role is ranked i-th: anchors the lowest normal scores, positives the lowest
    abnormal scores, negatives the highest abnormal score * label. Each segment's features are
    its crops' concatenated, (count, crops * F). Also returns each one's video (for SSLS weights).
    """
    b, t = scores.shape
    half = b // 2
    per_crop = features.reshape(b, crops, t, features.shape[-1])
    rankings = {
        "anchor": (0, -scores[:half]),
        "positive": (half, -scores[half:]),
        "negative": (half, scores[half:] * pseudo),
    }
    out = {}
    for role, (first, key) in rankings.items():
        index = jax.lax.top_k(key.reshape(-1), count)[1]
        video, step = first + index // t, index % t
        out[role] = per_crop[video, :, step].reshape(count, -1)
        out[f"{role}_video"] = video
    return out


class LAP(nnx.Module):
    """LAP: visual and caption temporal networks, concat fusion, RTFM's head; prompt losses in `loss`."""

    extra_fields: tuple[str, ...] = (TEXT_FIELD,)  # batch fields beyond `features` that scores/loss read

    def __init__(self, model_cfg: Any, prompt_bank: Any = None, loss_cfg: Any | None = None, *, rngs: nnx.Rngs):
        loss_cfg = loss_cfg if loss_cfg is not None else lap_config().loss
        self.feature_dim = int(model_cfg.feature_dim)
        self.text_dim = int(model_cfg.text_dim)
        self.dropout_rate = float(model_cfg.dropout)
        self.topk = int(model_cfg.topk)
        self.mtn = MultiScaleTemporalNetwork(self.feature_dim, rngs=rngs)
        self.text_mtn = MultiScaleTemporalNetwork(self.text_dim, rngs=rngs) if model_cfg.aggregate_text else None
        self.head = ScoreHead(self.feature_dim + self.text_dim, tuple(model_cfg.head_hidden), rngs=rngs)
        prompts = int(model_cfg.prompts)
        if prompts and (prompt_bank is None or np.shape(prompt_bank) != (prompts, self.text_dim)):
            raise ValueError(f"LAP needs a prompt bank of shape (model.prompts, model.text_dim) = "
                             f"{(prompts, self.text_dim)}, got {None if prompt_bank is None else np.shape(prompt_bank)}")
        self.prompt_bank = PromptBank(jnp.asarray(prompt_bank, jnp.float32)) if prompts else None
        self.gv_lambda = learnable_gv_lambda(loss_cfg)

    def dropout_masks(self, key: jax.Array, videos: int, crops: int, t: int) -> dict[str, jax.Array]:
        """The training forward's keep masks for `videos` videos (normal half first) of `crops` crops."""
        rows, (h1, h2) = videos * crops, (self.head.fc1.out_features, self.head.fc2.out_features)
        shapes = {"features": (rows, t, self.feature_dim), "fc1": (rows, t, h1), "fc2": (rows, t, h2),
                  "select_normal": (videos // 2, t), "select_abnormal": (videos // 2, t)}
        if self.text_mtn is not None:
            shapes["text"] = (rows, t, self.text_dim)
        return draw_keep_masks(key, shapes, self.dropout_rate)

    def _text(self, caption_embedding: jax.Array | None, x: jax.Array, crops: int) -> jax.Array:
        """The (B, T, E) caption embeddings, checked against the (B*crops, T, D) visual rows."""
        expected = (x.shape[0] // crops, x.shape[1], self.text_dim)
        if caption_embedding is None or caption_embedding.shape != expected:
            got = None if caption_embedding is None else caption_embedding.shape
            raise ValueError(f"LAP needs batch[{TEXT_FIELD!r}] of shape (B, T, text_dim) = {expected}, got {got}")
        return caption_embedding

    def _fuse(self, x: jax.Array, text: jax.Array, crops: int, train: bool, masks: dict[str, jax.Array] | None,
              segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(visual rows (B*crops, T, D), captions (B, T, E)) -> fused (B*crops, T, D+E), and before dropout.

        The caption branch runs once per video and is repeated over the crops: the code tiles
        the captions over the crops first, which gives the same values (its BatchNorm counts
        every tiled row: `replicas`); dropout still draws a mask per crop row.
        """
        visual = self.mtn(x, train, None if segment_ids is None else jnp.repeat(segment_ids, crops, axis=0))
        if self.text_mtn is not None:
            text = self.text_mtn(text, train, segment_ids, replicas=crops)
        text = jnp.repeat(text, crops, axis=0)
        clean = jnp.concatenate([visual, text], axis=-1)
        if self.text_mtn is not None:
            text = apply_dropout(text, masks, "text", self.dropout_rate)
        return jnp.concatenate([apply_dropout(visual, masks, "features", self.dropout_rate), text], axis=-1), clean

    def scores(self, features: jax.Array, mask: jax.Array | None = None, *,
               caption_embedding: jax.Array | None = None, segment_ids: jax.Array | None = None,
               crop_chunk: int | None = None, attention_block: int | None = None) -> jax.Array:
        """Test mode: (B, T, D) or (B, crops, T, D) and captions (B, T, E) -> (B, T) scores averaged
        over crops; padding by a (B, T) `mask` or packed `segment_ids` (0 at padded positions), as
        RTFM.scores (`crop_chunk`; `attention_block` unused). The caption branch runs once per chunk."""
        if caption_embedding is None:
            self._text(None, features.reshape(-1, *features.shape[-2:]), 1)  # the error naming the field
        text = caption_embedding.astype(jnp.float32)

        def score_rows(x, seg, text):
            crops = x.shape[0] // text.shape[0]
            fused, _ = self._fuse(x, self._text(text, x, crops), crops, False, None,
                                  None if seg is None else seg[::crops])
            return self.head(fused, None, self.dropout_rate)

        return chunked_scores(score_rows, features, text, mask, segment_ids, crop_chunk)

    def train_forward(self, features: jax.Array, caption_embedding: jax.Array, key: jax.Array | None = None,
                      masks: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
        """Training mode, normal videos first, as many abnormal: RTFM's outputs plus the pseudo-anomaly
        labels (half, T) and the triplet segments (with a prompt bank). `pooled` (B, D+E): the fused
        features before dropout, averaged over crops and time (for DARM's alignment)."""
        x, crops = flatten_crops(features)
        videos, t = x.shape[0] // crops, x.shape[1]
        check_halves(videos)
        text = self._text(caption_embedding, x, crops)
        if masks is None and key is not None:
            masks = self.dropout_masks(key, videos, crops, t)
        fused, clean = self._fuse(x, text, crops, True, masks)
        scores = crop_mean(self.head(fused, masks, self.dropout_rate), crops)
        out = magnitude_selection(fused, scores, crops, self.topk, masks, self.dropout_rate)
        out.update(scores=scores, pooled=clean.reshape(videos, crops * t, -1).mean(1))
        if self.prompt_bank is not None:
            bank = self.prompt_bank[...]
            out["pseudo_anomaly"] = prompt_similarity_labels(bank, text[videos // 2:])
            out.update(triplet_selection(fused, scores, out["pseudo_anomaly"], crops, bank.shape[0]))
        return out


def build(config: Any, *, prompt_bank: Any = None, seed: int = 0) -> LAP:
    """A freshly initialised LAP; the prompt bank from `prompt_bank` or the .npy at config.model.prompt_bank."""
    model_cfg = config.model
    if prompt_bank is None and int(model_cfg.prompts):
        if not model_cfg.prompt_bank:
            raise ValueError("LAP needs its prompt embeddings: set config.model.prompt_bank to a .npy file of shape "
                             "(model.prompts, model.text_dim), or pass prompt_bank")
        prompt_bank = np.load(model_cfg.prompt_bank)
    loss_cfg = config.loss if "loss" in config else None
    return LAP(model_cfg, prompt_bank, loss_cfg, rngs=nnx.Rngs(seed))


def loss(model: LAP, batch: dict[str, jax.Array], key: jax.Array | None, config: Any, *,
         weights: dict[str, jax.Array] | None = None, step: jax.Array | int | None = None
         ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """LAP's training loss on a trainer batch: (total, terms).

    cost = RTFM's cost + beta * pseudo-anomaly + gamma (* gamma, quirks.gamma_twice) * triplet,
    then SSLS (config.loss.gv). batch as rtfm.loss plus caption_embedding (B, T, E).
    Updates the model's BatchNorm running averages in place.
    """
    loss_cfg = config.loss
    weights = resolve_weights(config, weights)
    n_normal, n_abnormal, gv_lambda, sample_weights = ssls_setup(model, batch, config, weights)
    n_main = n_normal + n_abnormal
    out = model.train_forward(batch["features"][:n_main], batch[TEXT_FIELD][:n_main], key)
    cost, terms = rtfm_terms(out, batch["label"][:n_main], weights, loss_cfg, model.topk, sample_weights)
    zero = jnp.zeros((), jnp.float32)
    terms.update(pseudo_anomaly=zero, triplet=zero)
    if model.prompt_bank is not None:
        abnormal_scores = out["scores"][n_normal:]
        predicted = 1.0 - abnormal_scores if loss_cfg.quirks.pseudo_anomaly_inverted else abnormal_scores
        terms["pseudo_anomaly"] = weighted_mean(bce(predicted, out["pseudo_anomaly"]),
                                                None if sample_weights is None else sample_weights[n_normal:])
        triplet_weights = None
        if sample_weights is not None:
            triplet_weights = sum(sample_weights[out[f"{role}_video"]] for role in ("anchor", "positive", "negative")) / 3
        terms["triplet"] = weighted_mean(triplet_margin(out["anchor"], out["positive"], out["negative"],
                                                        margin=weights["triplet_margin"]), triplet_weights)
        gamma = weights["gamma"] * weights["gamma"] if loss_cfg.quirks.gamma_twice else weights["gamma"]
        cost = cost + weights["beta"] * terms["pseudo_anomaly"] + gamma * terms["triplet"]
    return apply_ssls(cost, terms, batch, config, n_normal, n_abnormal, gv_lambda, step)
