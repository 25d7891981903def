"""Losses: gradient reversal, L_DA and L_upd against numpy, GV-VAD scaling, compute_loss."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from pavad_jax import losses
from pavad_jax.models.darm import DomainDiscriminator, gradient_reversal
from pavad_jax.models.urdmu import MemoryUnit
from pavad_jax.models.detector import build_detector, default_loss_config, default_model_config, set_active_slots

T, D = 16, 24


def small_model_config():
    cfg = default_model_config()
    cfg.update(dict(feature_dim=D, hidden=32, mlp_dim=32, cls_hidden=16, a_slots=20, n_slots=17))
    return cfg


def experiment_config(method="pavad", normal=2, pseudo_normal=2):
    return ml_collections.ConfigDict({
        "data": {"batch": {"normal": normal, "abnormal": normal, "pseudo_normal": pseudo_normal}},
        "model": small_model_config(),
        "loss": default_loss_config(method),
    })


def make_batch(seed, normal=2, pseudo_normal=2, synthetic_abnormal=True):
    """Rows normal, abnormal, pseudo-normal as docs/architecture.md specifies."""
    rng = np.random.default_rng(seed)
    b = 2 * normal + pseudo_normal
    stream = np.array([0] * normal + [1] * normal + [2] * pseudo_normal, np.int32)
    synthetic = ((stream == 2) | ((stream == 1) & synthetic_abnormal)).astype(np.float32)
    return {
        "features": jnp.asarray(rng.normal(size=(b, T, D)).astype(np.float32) * (1 + synthetic[:, None, None])),
        "label": jnp.asarray((stream == 1).astype(np.float32)),
        "synthetic": jnp.asarray(synthetic),
        "stream": jnp.asarray(stream),
    }


def loss_fn(config):
    """compute_loss, jitted over (model, batch, weights, key)."""
    return nnx.jit(lambda model, batch, weights, key: losses.compute_loss(model, batch, weights, key, config=config))


def np_softplus_bce(logits, target):
    return np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))


# ---------------------------------------------------------------------------- gradient reversal

def test_gradient_reversal_is_identity_forward_and_negated_scaled_backward():
    x = jnp.arange(6.0).reshape(2, 3)
    upstream = jnp.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    np.testing.assert_array_equal(gradient_reversal(x, 0.3), x)
    grad = jax.jit(jax.grad(lambda x, s: jnp.sum(upstream * gradient_reversal(x, s))))(x, jnp.float32(0.3))
    np.testing.assert_allclose(grad, -0.3 * upstream, rtol=1e-6)
    strength_grad = jax.grad(lambda s: jnp.sum(gradient_reversal(x, s)))(jnp.float32(0.3))
    assert float(strength_grad) == 0.0


# ---------------------------------------------------------------------------- L_upd

def numpy_usage_update(z, m, active, tau, beta, eps, reading="normalized"):
    """PA-VAD Eqs. 10, 11, 13 written out directly over the active slots, in one of the two readings."""
    m = m[active]
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    mn = m / np.linalg.norm(m, axis=1, keepdims=True)
    logits = zn @ mn.T / tau
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    u = q.sum(0) / z.shape[0]
    u_bar = u.mean()
    total = 0.0
    for k in range(m.shape[0]):
        if reading == "raw":  # Eq. 13 as printed
            mu_k = (q[:, k:k + 1] * z).sum(0) / q[:, k].sum()
            distance = np.sum((m[k] - mu_k) ** 2)
        else:  # centre of the unit embeddings, compared by direction
            mu_k = (q[:, k:k + 1] * zn).sum(0) / q[:, k].sum()
            distance = np.sum((mn[k] - mu_k / np.linalg.norm(mu_k)) ** 2)
        total += (u_bar / (u[k] + eps)) ** beta * distance
    return total / m.shape[0]


@pytest.mark.parametrize("reading", ["normalized", "raw"])
def test_usage_update_against_numpy_with_a_slot_mask(reading):
    rng = np.random.default_rng(0)
    z = (5 * rng.normal(size=(30, 8))).astype(np.float32)
    m = rng.normal(size=(7, 8)).astype(np.float32)
    active = np.array([True] * 5 + [False] * 2)
    for tau, beta in ((0.1, 1.0), (0.5, 2.0)):
        got = losses.usage_update_loss(jnp.asarray(z), jnp.asarray(m), jnp.asarray(active), tau=tau, beta=beta,
                                       eps=1e-6, centers=reading, distance=reading)
        np.testing.assert_allclose(got["upd"], numpy_usage_update(z, m, active, tau, beta, 1e-6, reading), rtol=1e-4)
    # The direction reading ignores magnitudes: scaling the embeddings or a slot leaves it unchanged.
    scaled = losses.usage_update_loss(jnp.asarray(10 * z), jnp.asarray(m * np.arange(1, 8)[:, None]),
                                      jnp.asarray(active), tau=0.1, beta=1.0, centers=reading, distance=reading)
    unscaled = losses.usage_update_loss(jnp.asarray(z), jnp.asarray(m), jnp.asarray(active), tau=0.1, beta=1.0,
                                        centers=reading, distance=reading)
    assert (abs(float(scaled["upd"]) - float(unscaled["upd"])) < 1e-4) == (reading == "normalized")


def test_usage_update_direction_reading_is_bounded_and_leaves_slot_norms_alone():
    rng = np.random.default_rng(3)
    z, m = jnp.asarray(30 * rng.normal(size=(40, 8))), jnp.asarray(rng.normal(size=(6, 8)))
    active = jnp.ones(6, bool)
    out = losses.usage_update_loss(z, m, active, tau=0.1, beta=1.0)
    assert 0 <= float(out["upd"]) <= 4 * float(out["usage_weight_max"])  # each direction distance is <= 4
    grad = jax.grad(lambda m: losses.usage_update_loss(z, m, active, tau=0.1, beta=1.0)["upd"])(m)
    np.testing.assert_allclose(jnp.sum(grad * m, axis=-1), 0.0, atol=1e-5)  # no radial component
    with pytest.raises(ValueError, match="upd_centers must be one of"):
        losses.usage_update_loss(z, m, active, tau=0.1, beta=1.0, centers="unit")


def test_usage_update_stop_gradients():
    rng = np.random.default_rng(1)
    z, m = jnp.asarray(rng.normal(size=(30, 8))), jnp.asarray(rng.normal(size=(6, 8)))
    active = jnp.array([True] * 4 + [False] * 2)

    def grads(**switches):
        f = lambda z, m: losses.usage_update_loss(z, m, active, tau=0.1, beta=1.0, **switches)["upd"]
        return jax.grad(f, argnums=(0, 1))(z, m)

    g_z, g_m = grads()
    assert float(jnp.abs(g_z).max()) == 0.0  # centres and usage are constants: only slots move
    assert float(jnp.abs(g_m[:4]).max()) > 0
    assert float(jnp.abs(g_m[4:]).max()) == 0.0  # padded slots get exactly zero gradient
    g_z, _ = grads(stop_grad_centers=False)
    assert float(jnp.abs(g_z).max()) > 0
    g_z, _ = grads(stop_grad_usage=False)
    assert float(jnp.abs(g_z).max()) > 0


# ---------------------------------------------------------------------------- L_DA

def test_domain_alignment_against_numpy():
    disc = DomainDiscriminator(8, (5,), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(2)
    real, pseudo = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32) + 1

    def np_disc(x):
        w1, b1 = np.asarray(disc.layers[0].kernel[...]), np.asarray(disc.layers[0].bias[...])
        w2, b2 = np.asarray(disc.layers[1].kernel[...]), np.asarray(disc.layers[1].bias[...])
        return (np.maximum(x @ w1 + b1, 0) @ w2 + b2)[:, 0]

    got = losses.domain_alignment_loss(disc, jnp.asarray(real), jnp.asarray(pseudo), 0.2, 0.01)
    expected_bce = np_softplus_bce(np_disc(real), 0).mean() + np_softplus_bce(np_disc(pseudo), 1).mean()
    expected_dist = np.sum((real.mean(0) - pseudo.mean(0)) ** 2)
    np.testing.assert_allclose(got["da_bce"], expected_bce, rtol=1e-5)
    np.testing.assert_allclose(got["da_dist"], expected_dist, rtol=1e-5)
    np.testing.assert_allclose(got["da_total"], expected_bce + 0.01 * expected_dist, rtol=1e-5)

    # Through the reversal the features get -lambda_da times the discriminator's gradient.
    def bce_only(real, reversal):
        logits = disc(gradient_reversal(real, reversal))
        return losses.bce_with_logits(logits, 0.0).mean()

    reversed_grad = jax.grad(bce_only)(jnp.asarray(real), 0.2)
    plain_grad = jax.grad(lambda r: losses.bce_with_logits(disc(r), 0.0).mean())(jnp.asarray(real))
    np.testing.assert_allclose(reversed_grad, -0.2 * plain_grad, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------- compute_loss

def test_loss_weights_and_config_checks():
    weights = losses.default_loss_weights(experiment_config())
    assert set(weights) == set(losses.WEIGHT_NAMES)
    assert all(isinstance(v, np.float32) for v in weights.values())
    assert weights["lambda1"] == 1.0 and weights["lambda2"] == np.float32(0.1)
    assert losses.default_loss_weights(default_loss_config("urdmu"))["lambda1"] == 0.0
    with pytest.raises(ValueError, match="method"):
        default_loss_config("bogus")
    config = experiment_config()
    config.loss.gv.mode = "sometimes"
    with pytest.raises(ValueError, match="loss.gv.mode"):
        losses.compute_loss(build_detector(small_model_config()), make_batch(0), weights, jax.random.key(0),
                            config=config)


def test_zero_darm_weights_give_exactly_the_urdmu_loss():
    config = experiment_config()
    model = build_detector(small_model_config(), config.loss, seed=0)
    batch, key = make_batch(0), jax.random.key(7)
    weights = losses.default_loss_weights(config)
    compute = loss_fn(config)
    total, terms = compute(model, batch, {**weights, "lambda1": np.float32(0), "lambda2": np.float32(0)}, key)
    assert float(total) == float(terms["urdmu_total"])
    assert float(terms["da_total"]) > 0 and float(terms["upd"]) > 0  # computed, weighted out

    # The same UR-DMU loss from the model's training forward on the UR-DMU rows alone.
    k_encode, k_heads = jax.random.split(key)

    @nnx.jit
    def reference_loss(model):
        _, h = model.urdmu.encode(batch["features"], key=k_encode)
        out = model.urdmu.train_heads(h[:4], 1, k_heads)
        return losses.urdmu_loss(out, batch["label"][:4])[0]

    np.testing.assert_allclose(total, reference_loss(model), rtol=1e-6)
    full, terms = compute(model, batch, weights, key)
    np.testing.assert_allclose(full, terms["urdmu_total"] + terms["da_total"] + 0.1 * terms["upd"], rtol=1e-6)


def test_kl_without_the_time_axis_quirk():
    rng = np.random.default_rng(3)
    mu, logvar = rng.normal(size=(2, 5, 4)), 0.3 * rng.normal(size=(2, 5, 4))
    out = {"mu": jnp.asarray(mu), "logvar": jnp.asarray(logvar), "N_att": jnp.zeros((2, 5))}
    inner = 1 + logvar - mu**2 - np.exp(logvar)
    kl = lambda sum_over_time: losses.urdmu_loss_per_sample(
        {**out, "frame": jnp.zeros((4, 5)), "A_att": jnp.zeros((2, 5)), "A_Natt": jnp.zeros((2, 5)),
         "N_Aatt": jnp.zeros((2, 5)), **{k: jnp.ones((2, 4)) for k in
                                          ("anchor", "positive", "negative", "anchor_new", "negative_new")}},
        jnp.zeros(4), kl_sum_over_time=sum_over_time)["kl"].mean()
    np.testing.assert_allclose(kl(True), np.mean(-0.5 * inner.sum(1)), rtol=1e-6)
    np.testing.assert_allclose(kl(False), np.mean(-0.5 * inner.sum(-1)), rtol=1e-6)


def test_gv_vad_sample_and_batch_scaling():
    key, batch = jax.random.key(3), make_batch(1, pseudo_normal=0)
    none_cfg = experiment_config("urdmu", pseudo_normal=0)
    sample_cfg = experiment_config("gvvad", pseudo_normal=0)
    batch_cfg = experiment_config("gvvad", pseudo_normal=0)
    batch_cfg.loss.gv.mode = "batch"
    model = build_detector(small_model_config(), none_cfg.loss, seed=1)
    weights = losses.default_loss_weights(sample_cfg)
    base, base_terms = loss_fn(none_cfg)(model, batch, weights, key)
    assert float(base_terms["da_total"]) == 0.0 and float(base_terms["upd"]) == 0.0  # off, still logged
    sample_loss = loss_fn(sample_cfg)
    same, _ = sample_loss(model, batch, {**weights, "gv_lambda": np.float32(1)}, key)
    np.testing.assert_allclose(same, base, rtol=1e-6)  # lambda = 1 turns the scaling off

    # Abnormal rows are synthetic: their terms get lambda, anomaly gets it per video,
    # the (normal, abnormal) pair terms the pair's mean weight, normal-only terms none.
    lam = np.float32(0.5)
    _, terms = sample_loss(model, batch, {**weights, "gv_lambda": lam}, key)
    for name in ("A_loss", "panomaly"):
        np.testing.assert_allclose(terms[name], lam * base_terms[name], rtol=1e-5)
    for name in ("N_loss", "A_Nloss", "kl"):
        np.testing.assert_allclose(terms[name], base_terms[name], rtol=1e-6)
    for name in ("triplet", "distance"):
        np.testing.assert_allclose(terms[name], (1 + lam) / 2 * base_terms[name], rtol=1e-5)
    assert float(terms["gv_lambda"]) == lam

    scaled, _ = loss_fn(batch_cfg)(model, batch, {**weights, "gv_lambda": lam}, key)
    np.testing.assert_allclose(scaled, base * (0.5 + lam * 0.5), rtol=1e-6)  # half the rows synthetic


def test_learnable_gv_lambda_gets_a_gradient():
    config = experiment_config("gvvad", pseudo_normal=0)
    config.loss.gv.learnable = True
    model = build_detector(small_model_config(), config.loss, seed=0)
    np.testing.assert_allclose(model.learned_gv_lambda(), 0.5, rtol=1e-6)
    weights = losses.default_loss_weights(config)

    @nnx.jit
    def grads(model, batch):
        return nnx.grad(lambda m: losses.compute_loss(m, batch, weights, jax.random.key(0), config=config)[0])(model)

    g = grads(model, make_batch(2, pseudo_normal=0))
    assert float(jnp.abs(g["gv_lambda_raw"][...])) > 0


def test_padded_slots_get_exactly_zero_gradient():
    config = experiment_config()
    model = build_detector(small_model_config(), config.loss, seed=0)
    set_active_slots(model, 11, 9)
    weights = losses.default_loss_weights(config)

    @nnx.jit
    def grads(model, batch):
        return nnx.grad(lambda m: losses.compute_loss(m, batch, weights, jax.random.key(0), config=config)[0])(model)

    g = grads(model, make_batch(3))
    for bank, active in (("a_memory", 11), ("n_memory", 9)):
        block = np.asarray(g["urdmu"][bank]["memory_block"][...])
        assert np.all(block[active:] == 0), bank
        assert np.abs(block[:active]).max() > 0, bank


def test_jitted_training_step_with_darm_traces_once():
    config = experiment_config()
    model = build_detector(small_model_config(), config.loss, seed=0)
    optimizer = nnx.Optimizer(model, optax.adam(1e-4), wrt=nnx.Param)

    @nnx.jit
    @chex.assert_max_traces(n=1)
    def train_step(model, optimizer, batch, weights, key):
        def loss(model):
            return losses.compute_loss(model, batch, weights, key, config=config)

        (_, terms), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        optimizer.update(model, grads)
        return terms

    rng = jax.random.key(0)
    totals = []
    for step in range(3):
        weights = {k: np.float32(v * (1 + 0.1 * step)) for k, v in losses.default_loss_weights(config).items()}
        terms = train_step(model, optimizer, make_batch(10 + step), weights, jax.random.fold_in(rng, step))
        totals.append(float(terms["total"]))
        assert all(np.isfinite(float(v)) for v in terms.values())
    assert len(set(totals)) == 3
    for name in ("anomaly", "A_loss", "panomaly", "N_loss", "A_Nloss", "triplet", "kl", "distance", "urdmu_total",
                 "da_bce", "da_dist", "da_total", "upd", "total"):
        assert name in terms, name


@pytest.mark.parametrize("p", [0.0, 1.0, 1e-30, 1.0 - 1e-7, 0.3])
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_bce_gradient_is_finite_and_equals_torch_even_at_saturation(p, target):
    import torch

    x = torch.tensor(p, dtype=torch.float32, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy(x, torch.tensor(target, dtype=torch.float32))
    expected.backward()
    value, grad = jax.value_and_grad(lambda q: losses.bce(q, target))(jnp.float32(p))
    assert np.isfinite(float(grad)) and np.isfinite(float(value))
    np.testing.assert_allclose(float(value), expected.item(), rtol=1e-6)
    np.testing.assert_allclose(float(grad), x.grad.item(), rtol=1e-5)


def test_a_saturated_memory_unit_keeps_the_memory_losses_gradient_finite():
    """Memory units are sigmoids of raw dot products: large embeddings make them exactly 0 or 1 in
    float32, and UR-DMU's A/N memory losses are BCEs on them (targets 1 and 0)."""
    unit = MemoryUnit(6, 16, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(unit, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(0), (2, 20, 16)) * 400.0

    def loss(p, x):
        score, _ = nnx.merge(graphdef, p, rest)(x)
        att = jax.nn.sigmoid(jnp.einsum("btd,kd->btk", x, p["memory_block"][...]) / 4.0)
        return losses.bce(score, 1.0).mean() + losses.bce(att, 1.0).mean() + losses.bce(att, 0.0).mean()

    att = jax.nn.sigmoid(jnp.einsum("btd,kd->btk", x, params["memory_block"][...]) / 4.0)
    assert float(att.max()) == 1.0 and float(att.min()) == 0.0  # saturated both ways
    grads = jax.grad(loss, argnums=(0, 1))(params, x)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
