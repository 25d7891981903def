"""GV-VAD's synthetic-sample loss scaling in its official code's forms (pavad_jax/losses.py) and
as the RTFM and LAP losses apply it: the abnormal-loader batch form, the lambda warm-up, the raw
learnable lambda under weight decay, DSR, and the paper's per-sample Eq. 6."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from pavad_jax.losses import dsr_indices, gv_lambda_warmup, gv_official_scale
from pavad_jax.models import lap, rtfm
from pavad_jax.engine import pytorch_adam
import rtfm_torch_reference as ref
import test_lap as lap_tests
from test_rtfm import experiment_config, make_batch, tiny_model


def gv(mode="official", learnable=False, warmup="none"):
    return {"mode": mode, "learnable": learnable, "warmup": warmup, "warmup_ratio": 0.1, "warmup_offset": 100,
            "max_steps": 1000}


def code_warmup(epoch, max_epochs=1000, warmup_ratio=0.1, strategy="linear_cosine"):
    """GV-VAD's get_warmup_lr, transcribed in plain Python (the caller adds the code's +100)."""
    warmup_epochs = int(max_epochs * warmup_ratio)
    lo, hi = 0.001, 1.0
    if epoch < warmup_epochs:
        if strategy.startswith("linear"):
            return lo + (hi - lo) * (epoch / warmup_epochs)
        if strategy.startswith("exponential"):
            return lo * (hi / lo) ** (epoch / warmup_epochs)
        return lo + 0.5 * (hi - lo) * (1 - math.cos(math.pi * epoch / warmup_epochs))
    if strategy.endswith("cosine"):
        return hi * 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / (max_epochs - warmup_epochs)))
    if strategy.endswith("step"):
        return hi * (0.1 ** ((epoch - warmup_epochs) // 200))
    return hi


def test_official_scale_counts_the_abnormal_loader_only():
    sources = np.array([0, 1, 1, 0])
    expected = ref.official_ssls(torch.tensor(2.0), torch.from_numpy(sources), 0.5, 0.8).item()
    np.testing.assert_allclose(2.0 * gv_official_scale(jnp.asarray(sources), 0.5, 0.8), expected, rtol=1e-6)

    model = tiny_model(11)
    batch = jax.tree.map(jnp.asarray, make_batch(32, seed=11))  # synthetic: normal [0, 1], abnormal [0, 1]
    flipped = {**batch, "synthetic": jnp.array([1.0, 1.0, 0.0, 1.0])}  # only a normal row changes
    key = jax.random.key(0)
    total, terms = rtfm.loss(model, batch, key, experiment_config(gv=gv("official")))
    np.testing.assert_allclose(total, terms["cost"] * (0.5 + 0.5 * 1.0), rtol=1e-6)  # gv_lambda 1
    config = experiment_config(gv=gv("official"))
    config.loss.weights.gv_lambda = 0.5
    total, terms = rtfm.loss(model, batch, key, config)
    np.testing.assert_allclose(total, terms["cost"] * 0.75, rtol=1e-6)
    np.testing.assert_allclose(rtfm.loss(model, flipped, key, config)[0], total, rtol=1e-6)
    config.loss.gv.mode = "batch"  # the project's form counts all rows: the flip matters
    assert float(rtfm.loss(model, flipped, key, config)[0]) != pytest.approx(float(rtfm.loss(model, batch, key,
                                                                                              config)[0]))


@pytest.mark.parametrize("strategy", ["linear_cosine", "exponential_step", "cosine_none", "linear_step"])
def test_warmup_matches_the_code(strategy):
    steps = [1, 2, 50, 150, 800, 899, 900, 1000]
    ours = jax.jit(lambda s: gv_lambda_warmup(s, 1000, strategy))(jnp.asarray(steps))
    np.testing.assert_allclose(ours, [code_warmup(s + 100, strategy=strategy) for s in steps], rtol=1e-5, atol=1e-7)
    # Without the offset the rise is visible: from 0.001 at step 0 up to 1 at step 100.
    rise = [float(gv_lambda_warmup(s, 1000, strategy, offset=0)) for s in (0, 50, 99)]
    np.testing.assert_allclose(rise, [code_warmup(s, strategy=strategy) for s in (0, 50, 99)], rtol=1e-5)
    assert rise[0] == pytest.approx(0.001)
    assert float(gv_lambda_warmup(7, 1000, "none")) == 1.0
    with pytest.raises(ValueError, match="loss.gv.warmup"):
        gv_lambda_warmup(1, 1000, "linear")


def test_warmup_in_the_loss_needs_the_step():
    model = tiny_model(12)
    batch = jax.tree.map(jnp.asarray, make_batch(32, seed=12))
    config = experiment_config(gv=gv("official", warmup="linear_cosine"))
    config.loss.weights.gv_lambda = 0.5
    with pytest.raises(ValueError, match="needs the training step"):
        rtfm.loss(model, batch, None, config)
    total, terms = rtfm.loss(model, batch, None, config, step=449)  # the code's step 450: warm-up 0.5
    np.testing.assert_allclose(terms["gv_warmup"], code_warmup(450 + 100), rtol=1e-5)
    np.testing.assert_allclose(total, terms["cost"] * (0.5 + 0.5 * 0.5 * terms["gv_warmup"]), rtol=1e-6)


def test_dsr_keeps_every_synthetic_video_and_a_fraction_of_the_real_ones():
    synthetic = np.array([0] * 10 + [1] * 4 + [0] * 3, bool)
    np.testing.assert_array_equal(dsr_indices(synthetic, 1.0, seed=0), np.arange(17))
    kept = dsr_indices(synthetic, 0.5, seed=3)
    assert len(kept) == int(13 * 0.5) + 4 and len(set(kept.tolist())) == len(kept)
    np.testing.assert_array_equal(kept[-4:], [10, 11, 12, 13])  # the synthetic ones, after the sample
    assert not synthetic[kept[:-4]].any()
    np.testing.assert_array_equal(kept, dsr_indices(synthetic, 0.5, seed=3))
    assert not np.array_equal(kept, dsr_indices(synthetic, 0.5, seed=4))
    with pytest.raises(ValueError, match="DSR rate"):
        dsr_indices(synthetic, 0.0, seed=0)


def test_learnable_lambda_is_a_raw_parameter_under_weight_decay():
    config = experiment_config(gv=gv("official", learnable=True))
    config.loss.weights.gv_lambda = 0.5
    model = nnx.jit(lambda: rtfm.build(config))()  # one compiled initialisation, not op by op
    assert isinstance(model.gv_lambda, nnx.Param) and float(model.gv_lambda[...]) == 0.5
    batch = jax.tree.map(jnp.asarray, make_batch(32, seed=13))  # abnormal rows: one real, one synthetic
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def total(p):
        return rtfm.loss(nnx.merge(graphdef, p, rest, copy=True), batch, None, config)

    (value, terms), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    np.testing.assert_allclose(grads["gv_lambda"][...], 0.5 * terms["cost"], rtol=1e-5)  # cost * syn fraction
    # torch.optim.Adam(weight_decay=5e-3): the decay is added to the gradient; first step moves by lr.
    tx = pytorch_adam(1e-3, 5e-3)
    updates, _ = tx.update(grads, tx.init(params), params)
    g = float(grads["gv_lambda"][...]) + 5e-3 * 0.5
    np.testing.assert_allclose(updates["gv_lambda"][...], -1e-3 * g / (abs(g) + 1e-8), rtol=1e-4)
    # Raw: nothing keeps it positive.
    model.gv_lambda[...] = jnp.float32(-0.2)
    value, terms = rtfm.loss(model, batch, None, config)
    np.testing.assert_allclose(value, terms["cost"] * (0.5 - 0.5 * 0.2), rtol=1e-6)
    assert float(terms["gv_lambda"]) == pytest.approx(-0.2)
    config.loss.gv.mode = "none"
    with pytest.raises(ValueError, match="learnable needs"):
        rtfm.loss(model, batch, None, config)


def all_synthetic(batch):
    return {**batch, "synthetic": jnp.ones_like(batch["synthetic"])}


def test_paper_per_sample_form_scales_every_term_of_a_synthetic_video():
    model = tiny_model(14)
    batch = jax.tree.map(jnp.asarray, make_batch(32, seed=14))
    key = jax.random.key(1)
    plain, plain_terms = rtfm.loss(model, batch, key, experiment_config())
    sample = experiment_config(gv=gv("sample"))
    sample.loss.weights.gv_lambda = 0.3
    # Every video synthetic: the paper's Eq. 6-7 scale each term by lambda.
    scaled, terms = rtfm.loss(model, all_synthetic(batch), key, sample)
    np.testing.assert_allclose(scaled, 0.3 * plain, rtol=1e-5)
    for name in ("bce", "magnitude", "sparsity", "smoothness"):
        np.testing.assert_allclose(terms[name], 0.3 * plain_terms[name], rtol=1e-5, err_msg=name)
    # lambda 1 is the plain loss; a mixed batch weights the BCE per video.
    sample.loss.weights.gv_lambda = 1.0
    np.testing.assert_allclose(rtfm.loss(model, batch, key, sample)[0], plain, rtol=1e-6)
    sample.loss.weights.gv_lambda = 0.3
    _, mixed = rtfm.loss(model, batch, key, sample)
    out = model.train_forward(batch["features"], key)
    p = np.concatenate([out["score_normal"], out["score_abnormal"]]).astype(np.float64)
    y = np.asarray(batch["label"])
    per_video = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(mixed["bce"], np.mean(np.array([1, 0.3, 1, 0.3]) * per_video), rtol=1e-5)


def test_lap_prompt_terms_follow_the_per_sample_form():
    model = lap_tests.tiny_model(15)
    batch = jax.tree.map(jnp.asarray, all_synthetic(lap_tests.make_batch(32, seed=15)))
    key = jax.random.key(2)
    plain, plain_terms = lap.loss(model, batch, key, lap_tests.experiment_config())
    sample = lap_tests.experiment_config(gv=gv("sample"))
    sample.loss.weights.gv_lambda = 0.3
    scaled, terms = lap.loss(model, batch, key, sample)
    np.testing.assert_allclose(scaled, 0.3 * plain, rtol=1e-5)
    for name in ("pseudo_anomaly", "triplet"):
        np.testing.assert_allclose(terms[name], 0.3 * plain_terms[name], rtol=1e-5, err_msg=name)
    official = lap_tests.experiment_config(gv=gv("official"))
    np.testing.assert_allclose(lap.loss(model, batch, key, official)[0], 0.5 * plain, rtol=1e-5)  # lambda 0.5
