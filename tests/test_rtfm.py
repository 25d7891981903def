"""RTFM in Flax NNX against a PyTorch re-implementation of the official code: training forward,
loss, gradients, BatchNorm statistics, test scores, checkpoint import."""
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

from pavad_jax import import_rtfm
from pavad_jax.models import rtfm
from pavad_jax.models.defaults_rtfm import rtfm_config
from pavad_jax.models.detector import count_parameters
import rtfm_torch_reference as ref

D, HIDDEN, CROPS, HALF = 16, (12, 6), 3, 2


def perturb_batch_norms(model: torch.nn.Module, seed: int) -> None:
    """Random BatchNorm affine parameters and running statistics, so that every one matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                c = module.num_features
                module.weight.copy_(1 + 0.3 * torch.randn(c, generator=gen))
                module.bias.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                module.running_var.copy_(1 + 0.5 * torch.rand(c, generator=gen))


def numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def torch_masks(masks) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(mask)) for name, mask in masks.items()}


def experiment_config(base=rtfm_config, model=None, **loss_overrides) -> ml_collections.ConfigDict:
    """A tiny config of `base` (model fields `model`), two normal and two abnormal rows per batch."""
    config = base()
    config.model.update(model or {"feature_dim": D, "head_hidden": HIDDEN})
    config.data = ml_collections.ConfigDict({"batch": {"normal": HALF, "abnormal": HALF, "pseudo_normal": 0}})
    for field, value in loss_overrides.items():
        config.loss[field] = value
    return config


def make_batch(t: int, seed: int, crops: int = CROPS, text_dim: int | None = None) -> dict[str, np.ndarray]:
    """Random features (and captions), normal rows first; one synthetic video in each stream."""
    rng = np.random.default_rng(seed)
    batch = {"features": rng.normal(size=(2 * HALF, crops, t, D)).astype(np.float32),
             "label": np.array([0, 0, 1, 1], np.float32),
             "synthetic": np.array([0, 1, 0, 1], np.float32),
             "stream": np.array([0, 0, 1, 1], np.int32)}
    if text_dim:
        batch["caption_embedding"] = rng.normal(size=(2 * HALF, t, text_dim)).astype(np.float32)
    return batch


def reference_model(seed: int) -> ref.RTFM:
    torch.manual_seed(seed)
    model = ref.RTFM(D, HALF, HIDDEN)
    perturb_batch_norms(model, seed)
    return model


def loss_step(module, model, config):
    """A jitted training-step core as an engine would write it: the loss, its gradient, and the
    BatchNorm statistics carried out of the loss. The model mutates them in place, so it is
    merged with copy=True inside the differentiated function (fresh Variables at that trace
    level; without the copy flax raises TraceContextError)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, rest, batch, key):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            total, terms = module.loss(m, batch, key, config)
            return total, (terms, nnx.state(m, nnx.BatchStat))

        with jax.default_matmul_precision("highest"):
            (total, (terms, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return total, terms, grads, stats

    def run(batch, key):
        total, terms, grads, stats = step(params, rest, batch, key)
        trained = nnx.merge(graphdef, params, rest)
        nnx.update(trained, stats)
        # Gradients and new statistics in the official state_dict's names and layouts.
        return total, terms, import_rtfm.to_state_dict(nnx.merge(graphdef, grads, rest)), \
            import_rtfm.to_state_dict(trained)

    return run


def assert_matches_torch_after_backward(reference, grads, trained):
    """Gradients and running statistics of a torch model after forward + backward, against ours."""
    for name, param in reference.named_parameters():
        # float32 roundoff, relative to each tensor's largest entry (biases before a BatchNorm get ~0).
        expected = param.grad.numpy()
        atol = 1e-6 + 1e-4 * np.abs(expected).max()
        np.testing.assert_allclose(grads[name], expected, rtol=1e-4, atol=atol, err_msg=name)
    for name, value in reference.state_dict().items():
        if "running" in name:
            np.testing.assert_allclose(trained[name], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def jit_method(model, method: str):
    """model.<method> under jax.jit, the model's state passed in (its BatchNorm updates are dropped)."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, *a: getattr(nnx.merge(graphdef, state, copy=True), method)(*a))

    def call(*args):
        with jax.default_matmul_precision("highest"):
            return fn(state, *args)

    return call


def jit_loss(module, model, config):
    """(batch, key) -> module.loss(model, batch, key, config), jitted."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, batch, key: module.loss(nnx.merge(graphdef, state, copy=True), batch, key, config))
    return lambda batch, key: fn(state, jax.tree.map(jnp.asarray, batch), key)


def tiny_model(seed: int) -> rtfm.RTFM:
    """A small RTFM with the weights of a random torch reference (BatchNorms perturbed)."""
    return import_rtfm.rtfm_from_state_dict(numpy_state(reference_model(seed)))[0]


def test_config_defaults_import_no_jax():
    code = ("import sys; import pavad_jax.models.defaults_rtfm, pavad_jax.models.defaults_lap; "
            "assert 'jax' not in sys.modules and 'flax' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parents[1])


def test_parameter_count_at_the_papers_sizes():
    config = rtfm_config()
    model = nnx.eval_shape(lambda: rtfm.build(config))
    assert count_parameters(model) == 24_718_849  # I3D features, D = 2048
    assert count_parameters(model) == sum(p.numel() for p in ref.RTFM(2048, 32).parameters())
    config.model.feature_dim = 768  # GV-VAD's RTFM on CLIP ViT-L/14 features
    assert count_parameters(nnx.eval_shape(lambda: rtfm.build(config))) == 3_781_409


@pytest.mark.parametrize("t", [32, 64])
def test_training_forward_loss_gradients_and_statistics_match_torch(t):
    reference = reference_model(t)
    model, _ = import_rtfm.rtfm_from_state_dict(numpy_state(reference))
    config = experiment_config()
    batch = make_batch(t, seed=t)
    key = jax.random.key(t)
    masks = jax.jit(model.dropout_masks, static_argnums=(1, 2, 3))(key, 2 * HALF, CROPS, t)

    reference.train()
    out = reference(torch.from_numpy(batch["features"]), torch_masks(masks))
    labels = torch.from_numpy(batch["label"])
    cost, parts = ref.rtfm_cost(out, labels[:HALF], labels[HALF:], HALF)
    cost.backward()

    total, terms, grads, trained = loss_step(rtfm, model, config)(jax.tree.map(jnp.asarray, batch), key)
    forward = jit_method(model, "train_forward")(batch["features"], None, masks)
    np.testing.assert_allclose(forward["scores"], out["scores"][..., 0].detach(), atol=1e-5)
    np.testing.assert_allclose(forward["score_abnormal"], out["score_abnormal"][:, 0].detach(), atol=1e-5)
    np.testing.assert_allclose(terms["bce"], parts["bce"].item(), rtol=1e-5)
    np.testing.assert_allclose(terms["magnitude"], parts["magnitude"].item(), rtol=1e-5)
    np.testing.assert_allclose(8e-3 * terms["sparsity"], parts["sparsity"].item(), rtol=1e-5)
    np.testing.assert_allclose(8e-4 * terms["smoothness"], parts["smoothness"].item(), rtol=1e-5)
    np.testing.assert_allclose(total, cost.item(), rtol=1e-5)
    assert_matches_torch_after_backward(reference, grads, trained)


def test_test_scores_match_torch_eval_mode_and_ignore_padding():
    reference = reference_model(3).eval()
    model, _ = import_rtfm.rtfm_from_state_dict(numpy_state(reference))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, CROPS, 20, D)).astype(np.float32)
    with torch.no_grad():
        expected = reference.head(reference.Aggregate(torch.from_numpy(x).view(-1, 20, D)), None)
    expected = expected.view(3, CROPS, 20).mean(1).numpy()
    scores = jax.jit(lambda f, m=None: model.scores(f, m))
    np.testing.assert_allclose(scores(x), expected, atol=1e-5)
    np.testing.assert_allclose(scores(x[:, 0]), reference_scores_one_crop(reference, x[:, 0]), atol=1e-5)

    lengths, bucket = [1, 9, 20], 24
    padded = rng.normal(size=(3, CROPS, bucket, D)).astype(np.float32)  # garbage beyond each end
    for row, n in enumerate(lengths):
        padded[row, :, :n] = x[row, :, :n]
    mask = np.arange(bucket)[None] < np.array(lengths)[:, None]
    out = np.asarray(scores(padded, mask))
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(out[row, :n], np.asarray(scores(x[row:row + 1, :, :n]))[0], atol=1e-5)
        assert np.all(out[row, n:] == 0)


def reference_scores_one_crop(reference, x):
    with torch.no_grad():
        return reference.head(reference.Aggregate(torch.from_numpy(x)), None)[..., 0].numpy()


def test_dropout_and_selection_only_in_training():
    model = tiny_model(1)
    x = make_batch(32, seed=1)["features"]
    forward = jit_method(model, "train_forward")
    a, b = forward(x, jax.random.key(1), None), forward(x, jax.random.key(2), None)
    assert float(jnp.abs(a["scores"] - b["scores"]).max()) > 1e-4
    masks = jax.jit(model.dropout_masks, static_argnums=(1, 2, 3))(jax.random.key(1), 4, CROPS, 32)
    assert 0.2 < float(np.mean(np.asarray(masks["fc1"]))) < 0.4  # p = 0.7
    scores = jit_method(model, "scores")
    np.testing.assert_array_equal(scores(x), scores(x))


def test_score_view_quirk_and_topk_switches():
    batch = jax.tree.map(jnp.asarray, make_batch(64, seed=2))
    model = tiny_model(2)

    def terms(config):  # eager: one compiled program per variant would cost more than op-by-op here
        return rtfm.loss(model, batch, jax.random.key(0), config)[1]

    quirk, flat = terms(experiment_config()), terms(experiment_config(quirks={"score_view_32": False}))
    np.testing.assert_allclose(quirk["bce"], flat["bce"], rtol=1e-6)
    assert abs(float(quirk["smoothness"] - flat["smoothness"])) > 1e-4  # lag-2 pairs vs consecutive segments
    # At T = 64 the code's view gives columns of even and odd segments: the mean of their norms.
    abnormal = np.asarray(model.train_forward(batch["features"], jax.random.key(0))["scores"])
    by_hand = np.mean(np.linalg.norm(abnormal[HALF:].reshape(-1, 2), axis=0))
    np.testing.assert_allclose(quirk["sparsity"], by_hand, rtol=1e-5)
    assert float(terms(experiment_config(topk_by="score"))["bce"]) != pytest.approx(float(quirk["bce"]))
    no_regularisers = terms(experiment_config(sparsity_smoothness=False))
    np.testing.assert_allclose(no_regularisers["cost"], quirk["bce"] + 1e-4 * quirk["magnitude"], rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of 32"):
        rtfm.loss(model, jax.tree.map(jnp.asarray, make_batch(48, seed=2)), None, experiment_config())


def test_loss_rejects_batches_it_cannot_train_on():
    model = tiny_model(0)
    batch = jax.tree.map(jnp.asarray, make_batch(32, seed=0))
    config = experiment_config()
    config.data.batch.pseudo_normal = 2
    with pytest.raises(ValueError, match="pseudo_normal must be 0"):
        rtfm.loss(model, batch, None, config)
    config = experiment_config(gv={"mode": "sample", "learnable": False, "warmup": "linear_cosine",
                                   "warmup_ratio": 0.1, "warmup_offset": 100, "max_steps": 1000})
    with pytest.raises(ValueError, match="needs loss.gv.mode 'official'"):
        rtfm.loss(model, batch, None, config)


def test_import_round_trip_and_cli(tmp_path):
    reference = reference_model(5)
    arrays = numpy_state(reference)
    unused_caption_branch = {"Aggregate_text.conv_1.0.weight": np.zeros((2, 8, 3), np.float32)}  # GV-VAD's runs
    wrapped = {"state_dict": {f"module.{k}": v for k, v in {**arrays, **unused_caption_branch}.items()}}
    model, config = import_rtfm.rtfm_from_state_dict(wrapped)
    assert config.model.feature_dim == D and tuple(config.model.head_hidden) == HIDDEN
    back = import_rtfm.to_state_dict(model)
    assert set(back) == set(arrays)
    for name, value in arrays.items():
        if not name.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[name], value, err_msg=name)
    restored = ref.RTFM(D, HALF, HIDDEN)
    restored.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()}, strict=True)
    x = np.random.default_rng(0).normal(size=(2, 7, D)).astype(np.float32)
    np.testing.assert_allclose(jit_method(model, "scores")(x), reference_scores_one_crop(restored.eval(), x),
                               atol=1e-5)

    path = tmp_path / "rtfm-tiny.pkl"
    torch.save(reference.state_dict(), path)
    assert import_rtfm.main([str(path), "--output", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "config.json").is_file()

    broken = dict(arrays)
    del broken["fc2.bias"]
    with pytest.raises(ValueError, match="missing keys \\['fc2.bias'\\]"):
        import_rtfm.rtfm_from_state_dict(broken, source="x.pkl")
    with pytest.raises(ValueError, match="is this an RTFM"):
        import_rtfm.rtfm_from_state_dict({"memory": np.zeros(3)}, source="x.pkl")
