"""Training parity: pavad_jax and the PyTorch re-implementation of the reference, 20 Adam steps apart from nothing.

Both start from the same weights, see the same batches, run with dropout off and get the same
reparameterisation noise; the JAX side is the trainer's own pieces (compute_loss and
make_optimizer, torch-style coupled weight decay). The loss of every step agrees to 1e-5
(relative), and so does every parameter tensor after the 20 steps (relative L2 distance).
Tensors rather than elements: Adam divides each step by sqrt(v), so the few elements whose
gradient sits at float32 rounding level take steps that rounding decides, on both sides alike
(a handful reach 1e-4 here while their tensors agree to ~1e-6).
"""
import jax
import numpy as np
import pytest
import torch
from flax import nnx

from pavad_jax.config_base import base_config
from pavad_jax.import_urdmu import detector_from_state_dict, key_map, model_config_from_shapes
from pavad_jax.losses import compute_loss, default_loss_weights
from pavad_jax.models.detector import build_detector, default_loss_config
from pavad_jax.engine import make_optimizer
from urdmu_torch_reference import WSAD, ad_loss

STEPS, T, D, HALF = 20, 24, 32, 2
SIZES = dict(hidden=64, heads=2, mlp_dim=48, cls_hidden=16)  # narrow: seconds, not minutes


def _config(anchor_quirk: bool):
    config = base_config()
    config.loss = default_loss_config("urdmu")
    config.data.batch.normal, config.data.batch.abnormal, config.data.batch.pseudo_normal = HALF, HALF, 0
    config.model.dropout = 0.0
    config.model.quirks.anchor_at_abnormal_index = anchor_quirk
    config.optim.learning_rate = 1e-3  # 10x the reference's, so 20 steps move the weights visibly
    config.optim.weight_decay = 5e-5
    return config


def _batches(rng):
    """STEPS batches of features (2*HALF, T, D) (normal rows first) and noise (HALF, T, hidden)."""
    for _ in range(STEPS):
        features = (2 * rng.normal(size=(2 * HALF, T, D)) + 0.5).astype(np.float32)
        yield features, rng.normal(size=(HALF, T, SIZES["hidden"])).astype(np.float32)


def _torch_run(reference, config, batches):
    optimizer = torch.optim.Adam(reference.parameters(), lr=config.optim.learning_rate,
                                 betas=(config.optim.b1, config.optim.b2), eps=config.optim.eps,
                                 weight_decay=config.optim.weight_decay)
    label = torch.tensor([0.0] * HALF + [1.0] * HALF)
    losses = []
    for features, noise in batches:
        loss = ad_loss(reference(torch.from_numpy(features), noise=torch.from_numpy(noise)), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}


def _jax_run(state_dict, config, batches):
    imported, _ = detector_from_state_dict(state_dict)
    model_cfg = model_config_from_shapes(state_dict)  # the imported sizes, with this test's dropout and quirks
    model_cfg.update(SIZES, dropout=config.model.dropout, quirks=config.model.quirks)
    detector = build_detector(model_cfg, config.loss, seed=0)
    nnx.update(detector.urdmu, nnx.state(imported.urdmu, nnx.Param))
    graphdef, params, rest = nnx.split(detector, nnx.Param, ...)
    tx = make_optimizer(config.optim)
    opt_state = tx.init(params)
    weights = default_loss_weights(config)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            return compute_loss(nnx.merge(graphdef, p, rest), batch, weights, jax.random.key(0), config=config)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), opt_state, loss

    label = np.array([0.0] * HALF + [1.0] * HALF, np.float32)
    losses = []
    with jax.default_matmul_precision("highest"):
        for features, noise in batches:
            batch = {"features": features, "label": label, "synthetic": np.ones_like(label),
                     "stream": np.array([0] * HALF + [1] * HALF, np.int32), "reparam_noise": noise}
            params, opt_state, loss = step(params, opt_state, batch)
            losses.append(float(loss))
    return losses, nnx.to_flat_state(params)


@pytest.mark.parametrize("anchor_quirk", [False, True])
def test_twenty_adam_steps_match_the_torch_reference(anchor_quirk):
    torch.manual_seed(0)
    reference = WSAD(D, 20, 17, anchor_at_abnormal_index=anchor_quirk, **SIZES).train()
    for module in reference.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    initial = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    config = _config(anchor_quirk)
    torch_losses, torch_params = _torch_run(reference, config, _batches(np.random.default_rng(1)))
    jax_losses, jax_params = _jax_run(initial, config, _batches(np.random.default_rng(1)))

    np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-5)
    ours = dict(jax_params)
    for key, (path, convert) in key_map(depth=2).items():
        expected, start = convert(torch_params[key]), convert(initial[key])
        got = np.asarray(ours[path].get_value())
        size = np.linalg.norm(expected)
        assert np.linalg.norm(got - expected) <= 1e-5 * size, (key, np.linalg.norm(got - expected) / size)
        assert np.linalg.norm(expected - start) > 1e-3 * size, key  # it moved 100x the tolerance: a real test
