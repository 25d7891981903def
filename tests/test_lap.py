"""LAP (GV-VAD's detector) in Flax NNX against a PyTorch re-implementation of GV-VAD's code:
both branches, pseudo-anomaly labels and loss, prompt triplet, gradients, statistics, test scores."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

from pavad_jax import import_rtfm
from pavad_jax.models import lap
from pavad_jax.models.defaults_lap import lap_config
from pavad_jax.models.detector import count_parameters
import lap_torch_reference as ref
import test_rtfm as rtfm_tests
from test_rtfm import (D, HALF, HIDDEN, assert_matches_torch_after_backward, jit_loss, jit_method, loss_step,
                       numpy_state, perturb_batch_norms, torch_masks)

E, P, CROPS = 8, 3, 5  # caption width, prompts; the code reads crop 4 of the captions: >= 5 crops


def prompt_bank(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(P, E)).astype(np.float32)


def experiment_config(**loss_overrides) -> ml_collections.ConfigDict:
    model = {"feature_dim": D, "text_dim": E, "head_hidden": HIDDEN, "prompts": P}
    return rtfm_tests.experiment_config(lap_config, model, **loss_overrides)


def make_batch(t: int, seed: int) -> dict[str, np.ndarray]:
    return rtfm_tests.make_batch(t, seed, crops=CROPS, text_dim=E)


def tiled(captions: np.ndarray) -> torch.Tensor:
    """Captions as the code feeds them: tiled over the crops, (B, crops, T, E)."""
    return torch.from_numpy(np.repeat(captions[:, None], CROPS, axis=1))


def reference_model(seed: int) -> ref.LAP:
    torch.manual_seed(seed)
    model = ref.LAP(D, E, HALF, torch.from_numpy(prompt_bank(seed)), HIDDEN)
    perturb_batch_norms(model, seed)
    return model


def tiny_model(seed: int) -> lap.LAP:
    return import_rtfm.lap_from_state_dict(numpy_state(reference_model(seed)), prompt_bank(seed))[0]


def reference_test_scores(reference: ref.LAP, x: np.ndarray, captions: np.ndarray) -> np.ndarray:
    """The code's test forward (eval mode), crops averaged."""
    b, crops, t, _ = x.shape
    with torch.no_grad():
        visual = reference.Aggregate(torch.from_numpy(x).reshape(-1, t, D))
        text = reference.Aggregate_text(torch.from_numpy(np.repeat(captions[:, None], crops, 1)).reshape(-1, t, E))
        return reference.head(torch.cat([visual, text], dim=2), None).view(b, crops, t).mean(1).numpy()


def test_parameter_count_at_the_papers_sizes():
    config = lap_config()  # CLIP ViT-L/14 visual features and caption embeddings, D = E = 768
    model = nnx.eval_shape(lambda: lap.build(config, prompt_bank=np.zeros((26, 768))))
    assert count_parameters(model) == 7_496_513  # the prompt bank is an input, not a parameter
    torch_count = sum(p.numel() for p in ref.LAP(768, 768, 32, torch.zeros(26, 768)).parameters())
    assert count_parameters(model) == torch_count
    assert isinstance(model.prompt_bank, lap.PromptBank) and not isinstance(model.prompt_bank, nnx.Param)


def test_training_forward_loss_gradients_and_statistics_match_torch():
    t = 64  # the official T (the score view's T = 32 case is covered by test_rtfm)
    reference = reference_model(t)
    model = tiny_model(t)
    config = experiment_config()
    batch = make_batch(t, seed=t)
    key = jax.random.key(t)
    masks = jax.jit(model.dropout_masks, static_argnums=(1, 2, 3))(key, 2 * HALF, CROPS, t)
    assert set(masks) == {"features", "text", "fc1", "fc2", "select_normal", "select_abnormal"}

    reference.train()
    out = reference(torch.from_numpy(batch["features"]), tiled(batch["caption_embedding"]), torch_masks(masks))
    labels = torch.from_numpy(batch["label"])
    cost, _ = ref.lap_cost(out, labels[:HALF], labels[HALF:], HALF)
    cost.backward()

    total, terms, grads, trained = loss_step(lap, model, config)(jax.tree.map(jnp.asarray, batch), key)
    forward = jit_method(model, "train_forward")(batch["features"], batch["caption_embedding"], None, masks)
    np.testing.assert_allclose(forward["scores"], out["scores"][..., 0].detach(), atol=1e-5)
    np.testing.assert_array_equal(forward["pseudo_anomaly"], out["abn_index"][..., 0].numpy())
    assert 0 < float(forward["pseudo_anomaly"].sum()) < HALF * t
    np.testing.assert_allclose(terms["pseudo_anomaly"], out["pal"].item(), rtol=1e-5)
    np.testing.assert_allclose(0.1 * terms["triplet"], out["triplet"].item(), rtol=1e-5)
    np.testing.assert_allclose(total, cost.item(), rtol=1e-5)
    assert_matches_torch_after_backward(reference, grads, trained)  # the caption branch's BatchNorms too


def test_test_scores_match_torch_eval_mode_and_ignore_padding():
    reference = reference_model(3).eval()
    model = tiny_model(3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, CROPS, 20, D)).astype(np.float32)
    captions = rng.normal(size=(3, 20, E)).astype(np.float32)
    scores = jax.jit(lambda f, c, m=None: model.scores(f, m, caption_embedding=c))
    np.testing.assert_allclose(scores(x, captions), reference_test_scores(reference, x, captions), atol=1e-5)

    lengths, bucket = [1, 9, 20], 24
    padded_x = rng.normal(size=(3, CROPS, bucket, D)).astype(np.float32)  # garbage beyond each end
    padded_c = rng.normal(size=(3, bucket, E)).astype(np.float32)
    for row, n in enumerate(lengths):
        padded_x[row, :, :n], padded_c[row, :n] = x[row, :, :n], captions[row, :n]
    mask = np.arange(bucket)[None] < np.array(lengths)[:, None]
    out = np.asarray(scores(padded_x, padded_c, mask))
    for row, n in enumerate(lengths):
        alone = np.asarray(scores(x[row:row + 1, :, :n], captions[row:row + 1, :n]))[0]
        np.testing.assert_allclose(out[row, :n], alone, atol=1e-5)
        assert np.all(out[row, n:] == 0)
    with pytest.raises(ValueError, match="caption_embedding"):
        model.scores(x)


def test_pseudo_anomaly_labels_by_hand():
    bank = prompt_bank(1)
    text = np.random.default_rng(1).normal(size=(2, 10, E)).astype(np.float32)
    text[0, 3] = 5 * bank[1]  # a caption that is one of the prompts
    cosine = (text @ bank.T) / np.linalg.norm(text, axis=-1, keepdims=True) / np.linalg.norm(bank, axis=-1)
    best = cosine.max(-1)
    expected = best > best.mean() + best.std(ddof=1)
    labels = np.asarray(lap.prompt_similarity_labels(jnp.asarray(bank), jnp.asarray(text)))
    np.testing.assert_array_equal(labels, expected)
    assert labels[0, 3] == 1


def test_switches_for_the_papers_forms():
    batch = jax.tree.map(jnp.asarray, make_batch(32, seed=4))
    model = tiny_model(4)
    key = jax.random.key(0)

    def terms(config):  # eager: one compiled program per variant would cost more than op-by-op here
        return lap.loss(model, batch, key, config)[1]

    code = terms(experiment_config())
    once = terms(experiment_config(quirks={"score_view_32": True, "gamma_twice": False,
                                           "pseudo_anomaly_inverted": True}))
    np.testing.assert_allclose(once["cost"] - code["cost"], (0.1 - 0.01) * code["triplet"], rtol=1e-4)
    forward = model.train_forward(batch["features"], batch["caption_embedding"], key)
    s, c = np.asarray(forward["scores"][HALF:], np.float64), np.asarray(forward["pseudo_anomaly"])
    direct = terms(experiment_config(quirks={"score_view_32": True, "gamma_twice": True,
                                             "pseudo_anomaly_inverted": False}))
    np.testing.assert_allclose(direct["pseudo_anomaly"], np.mean(-(c * np.log(s) + (1 - c) * np.log(1 - s))),
                               rtol=1e-5)
    np.testing.assert_allclose(code["pseudo_anomaly"], np.mean(-(c * np.log(1 - s) + (1 - c) * np.log(s))),
                               rtol=1e-5)
    by_score = terms(experiment_config(topk_by="score"))
    top = np.sort(np.asarray(forward["scores"]), axis=-1)[:, -3:].mean(-1)
    labels = np.asarray(batch["label"])
    np.testing.assert_allclose(by_score["bce"], np.mean(-(labels * np.log(top) + (1 - labels) * np.log(1 - top))),
                               rtol=1e-5)


def test_tevad_and_raw_captions():
    reference = reference_model(6)
    tevad, config = import_rtfm.lap_from_state_dict(numpy_state(reference), None)
    assert tevad.prompt_bank is None and config.model.name == "tevad"
    batch = make_batch(32, seed=6)
    config.data = experiment_config().data
    _, terms = jit_loss(lap, tevad, config)(batch, None)
    assert float(terms["pseudo_anomaly"]) == 0 and float(terms["triplet"]) == 0
    reference.train()
    with torch.no_grad():
        out = reference(torch.from_numpy(batch["features"]), tiled(batch["caption_embedding"]))
    labels = torch.from_numpy(batch["label"])
    expected, _ = ref.rtfm_cost(out, labels[:HALF], labels[HALF:], HALF)
    np.testing.assert_allclose(terms["cost"], expected.item(), rtol=1e-5)

    raw = experiment_config()
    raw.model.aggregate_text = False
    model = lap.build(raw, prompt_bank=prompt_bank())
    assert model.text_mtn is None
    scores = jax.jit(lambda f, c: model.scores(f, caption_embedding=c))(batch["features"], batch["caption_embedding"])
    assert scores.shape == (4, 32) and bool(jnp.all(jnp.isfinite(scores)))


def test_build_reads_the_prompt_bank_file(tmp_path):
    config = experiment_config()
    with pytest.raises(ValueError, match="config.model.prompt_bank"):
        lap.build(config)
    np.save(tmp_path / "bank.npy", prompt_bank(2))
    config.model.prompt_bank = str(tmp_path / "bank.npy")
    np.testing.assert_array_equal(lap.build(config).prompt_bank[...], prompt_bank(2))
    config.model.prompts = 4
    with pytest.raises(ValueError, match="prompt bank of shape"):
        lap.build(config)


def test_import_round_trip_with_learnable_lambda():
    arrays = numpy_state(reference_model(7))
    arrays["VLR"] = np.float32(0.25)
    model, config = import_rtfm.lap_from_state_dict(arrays, prompt_bank(7))
    assert config.loss.gv.learnable and config.loss.gv.mode == "official"
    assert float(model.gv_lambda[...]) == 0.25 and isinstance(model.gv_lambda, nnx.Param)
    back = import_rtfm.to_state_dict(model)
    assert set(back) == set(arrays)
    for name, value in arrays.items():
        if not name.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[name], value, err_msg=name)
    np.testing.assert_array_equal(model.prompt_bank[...], prompt_bank(7))
