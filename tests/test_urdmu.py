"""UR-DMU in Flax NNX: layers against hand computation, masks, slot masks, both forward modes."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from pavad_jax.import_urdmu import detector_from_state_dict
from pavad_jax.losses import urdmu_loss
from pavad_jax.models.detector import build_detector, count_parameters, default_model_config, set_active_slots
from pavad_jax.models.urdmu import (LOCAL_BLOCK, MemoryUnit, global_attention, local_attention, local_attention_matrix,
                                  topk_mean)
from urdmu_torch_reference import WSAD, ad_loss


def small_config(**overrides):
    cfg = default_model_config()
    cfg.update(dict(feature_dim=24, hidden=32, mlp_dim=32, cls_hidden=16, a_slots=20, n_slots=17))
    cfg.update(overrides)
    return cfg


def jit_scores(detector):
    """detector.scores, jitted (eager NNX calls are slow on a busy CPU)."""
    return jax.jit(lambda x, mask=None: detector.scores(x, mask))


def jit_train_forward(detector):
    """detector.urdmu.train_forward, jitted."""
    return jax.jit(lambda x, key, noise=None: detector.urdmu.train_forward(x, key, reparam_noise=noise))


def test_parameter_count_for_i3d_features():
    detector = nnx.eval_shape(lambda: build_detector(default_model_config(), seed=0))
    assert count_parameters(detector.urdmu) == 6_492_929
    # The DARM discriminator (512 -> 256 -> 1) is extra: not part of UR-DMU's count.
    assert count_parameters(detector) - count_parameters(detector.urdmu) == 512 * 256 + 256 + 256 + 1


def test_shapes_and_crop_averaging():
    detector = build_detector(small_config(), seed=0)
    x = jax.random.normal(jax.random.key(0), (3, 4, 10, 24))
    scores = jit_scores(detector)
    crop_scores = scores(x)
    assert crop_scores.shape == (3, 10)
    assert bool(jnp.all((crop_scores > 0) & (crop_scores < 1)))
    per_crop = jnp.stack([scores(x[:, c]) for c in range(4)], axis=1)
    np.testing.assert_allclose(crop_scores, per_crop.mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="as many normal as abnormal"):
        jit_train_forward(detector)(x, jax.random.key(1))
    out = jit_train_forward(detector)(x[:2], jax.random.key(1))
    assert out["frame"].shape == (2, 10)
    for name in ("A_att", "N_att", "A_Natt", "N_Aatt"):
        assert out[name].shape == (1, 10)
    for name in ("anchor", "positive", "negative", "anchor_new", "negative_new"):
        assert out[name].shape == (1, 32)
    assert out["mu"].shape == (4, 10, 32)  # per crop row of the normal half


def test_local_attention_matrix_by_hand():
    t = 5
    raw = np.array([[math.exp(-abs(i - j) / math.e) for j in range(t)] for i in range(t)])
    quirk = np.array([[raw[i, j] / raw[j].sum() for j in range(t)] for i in range(t)])
    np.testing.assert_allclose(local_attention_matrix(t), quirk, rtol=1e-6)
    assert not np.allclose(quirk.sum(1), 1.0)  # the quirk: edge rows do not sum to 1
    fixed = local_attention_matrix(t, column_norm=False)
    np.testing.assert_allclose(fixed, raw / raw.sum(1, keepdims=True), rtol=1e-6)
    # With true lengths, each video gets its unpadded matrix and zeros beyond its end.
    per_video = local_attention_matrix(8, jnp.array([5, 1, 8]))
    np.testing.assert_allclose(per_video[0, :5, :5], quirk, rtol=1e-6)
    assert np.all(np.asarray(per_video[0])[5:] == 0) and np.all(np.asarray(per_video[0])[:, 5:] == 0)
    np.testing.assert_allclose(per_video[1, 0, 0], 1.0)
    np.testing.assert_allclose(per_video[2], local_attention_matrix(8), rtol=1e-6)


def test_memory_read_by_hand():
    memory = MemoryUnit(20, 8, rngs=nnx.Rngs(0))
    bound = 1 / math.sqrt(8)
    m = np.asarray(memory.memory_block[...])
    assert np.all(np.abs(m) <= bound) and m.std() > bound / 3  # uniform(+-1/sqrt(d))
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32)
    score, readout = memory(jnp.asarray(x))
    att = 1 / (1 + np.exp(-(x @ m.T) / math.sqrt(8)))
    k = 20 // 16 + 1
    np.testing.assert_allclose(score, np.sort(att, -1)[..., ::-1][..., :k].mean(-1), rtol=1e-5)
    np.testing.assert_allclose(readout, att @ m, rtol=1e-5, atol=1e-6)


def test_topk_mean_with_traced_k_and_mask():
    values = jnp.array([[0.1, 0.9, 0.5, 0.7, 0.3]])
    valid = jnp.array([True, False, True, True, True])
    f = jax.jit(topk_mean)
    np.testing.assert_allclose(f(values, jnp.int32(2), valid), [(0.7 + 0.5) / 2], rtol=1e-6)
    np.testing.assert_allclose(f(values, jnp.int32(3), None), [(0.9 + 0.7 + 0.5) / 3], rtol=1e-6)


def test_padding_mask_gives_each_video_its_unpadded_scores():
    detector = build_detector(small_config(), seed=1)
    lengths = [1, 7, 19, 30]
    bucket = 32
    rng = np.random.default_rng(1)
    # Padding holds garbage, not zeros: the mask alone must make it irrelevant.
    x = rng.normal(size=(4, 2, bucket, 24)).astype(np.float32)
    mask = np.arange(bucket)[None] < np.array(lengths)[:, None]
    scores = jit_scores(detector)
    padded = np.asarray(scores(x, mask))
    for row, t in enumerate(lengths):
        alone = np.asarray(scores(x[row:row + 1, :, :t]))[0]
        np.testing.assert_allclose(padded[row, :t], alone, atol=1e-6, rtol=0)
        assert np.all(padded[row, t:] == 0)
    # A fully padded row (no video) yields zeros, not NaN.
    assert np.all(np.asarray(scores(x[:1], np.zeros((1, bucket), bool))) == 0)


def copy_into_smaller_banks(big, small):
    """Give `small` the parameters of `big`, its memory banks cut to their slot counts."""
    params = nnx.to_pure_dict(nnx.state(big, nnx.Param))
    for bank in ("a_memory", "n_memory"):
        k = getattr(small.urdmu, bank).memory_block[...].shape[0]
        params["urdmu"][bank]["memory_block"] = params["urdmu"][bank]["memory_block"][:k]
    state = nnx.state(small, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(small, state)


def test_slot_mask_equals_a_smaller_bank():
    big = build_detector(small_config(a_slots=40, n_slots=35), seed=2)
    small = build_detector(small_config(a_slots=20, n_slots=17), seed=2)
    copy_into_smaller_banks(big, small)
    set_active_slots(big, 20, 17)
    x = jax.random.normal(jax.random.key(3), (2, 12, 24))
    # 40 // 16 + 1 = 3 slots would enter the top-k mean without the mask; 20 // 16 + 1 = 2 must.
    np.testing.assert_allclose(jit_scores(big)(x), jit_scores(small)(x), atol=1e-6)
    noise = jax.random.normal(jax.random.key(4), (1, 12, 32))
    out_big = jit_train_forward(big)(x, None, noise)
    out_small = jit_train_forward(small)(x, None, noise)
    for name in out_small:
        np.testing.assert_allclose(out_big[name], out_small[name], atol=1e-5, err_msg=name)


def test_slot_mask_works_with_a_traced_count_under_vmap():
    big = build_detector(small_config(a_slots=40, n_slots=35), seed=2)
    x = jax.random.normal(jax.random.key(3), (2, 12, 24))

    graphdef, state = nnx.split(big)

    def scores_for(a_active, n_active):
        model = nnx.merge(graphdef, state, copy=True)  # fresh variables inside the trace, free to mutate
        set_active_slots(model, a_active, n_active)
        return model.scores(x)

    batched = jax.jit(jax.vmap(scores_for))(jnp.array([20, 40]), jnp.array([17, 35]))
    np.testing.assert_allclose(batched[1], jit_scores(big)(x), atol=1e-6)
    set_active_slots(big, 20, 17)
    np.testing.assert_allclose(batched[0], jit_scores(big)(x), atol=1e-6)


def test_dropout_only_in_training():
    detector = build_detector(small_config(), seed=0)
    x = jax.random.normal(jax.random.key(0), (2, 8, 24))
    noise = jnp.zeros((1, 8, 32))
    forward, scores = jit_train_forward(detector), jit_scores(detector)
    a = forward(x, jax.random.key(1), noise)["frame"]
    b = forward(x, jax.random.key(1), noise)["frame"]
    c = forward(x, jax.random.key(2), noise)["frame"]
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-4
    np.testing.assert_array_equal(scores(x), scores(x))  # test mode: no dropout


def test_local_attention_quirk_switch_changes_scores():
    on = build_detector(small_config(), seed=0)
    off = build_detector(small_config(quirks={"local_attn_column_norm": False, "kl_sum_over_time": True}), seed=0)
    x = jax.random.normal(jax.random.key(0), (1, 9, 24))
    assert float(jnp.abs(jit_scores(on)(x) - jit_scores(off)(x)).max()) > 1e-6


@pytest.mark.parametrize("crops", [1, 3])
def test_training_forward_and_loss_match_torch_reference(crops):
    """Dropout off on both sides and the same reparameterisation noise: identical outputs."""
    torch.manual_seed(crops)
    reference = WSAD(64, 20, 33).train()
    for module in reference.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    detector, _ = detector_from_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    rng = np.random.default_rng(crops)
    x = (3 * rng.normal(size=(4, crops, 40, 64))).astype(np.float32)
    noise = rng.normal(size=(2 * crops, 40, 512)).astype(np.float32)
    label = np.array([0, 0, 1, 1], np.float32)
    expected = reference(torch.from_numpy(x), noise=torch.from_numpy(noise))
    expected_loss = ad_loss(expected, torch.from_numpy(label)).item()
    with jax.default_matmul_precision("highest"):
        out = jit_train_forward(detector)(jnp.asarray(x), None, jnp.asarray(noise))
    for name in ("frame", "A_att", "N_att", "A_Natt", "N_Aatt"):
        np.testing.assert_allclose(out[name], expected[name].detach().numpy(), atol=1e-5, err_msg=name)
    total, terms = urdmu_loss(out, jnp.asarray(label))
    np.testing.assert_allclose(terms["triplet"], expected["triplet_margin"].item(), rtol=1e-5)
    np.testing.assert_allclose(terms["kl"], expected["kl_loss"].item(), rtol=1e-5)
    np.testing.assert_allclose(terms["distance"], expected["distance"].item(), rtol=1e-5)
    np.testing.assert_allclose(total, expected_loss, rtol=1e-5)


def test_blocked_attention_and_banded_local_branch_equal_the_dense_ones():
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.normal(size=(3, 300, 2, 8)), jnp.float32) for _ in range(3))
    ids = jnp.asarray(np.repeat([[1] * 140 + [2] * 100 + [0] * 60], 3, axis=0), jnp.int32)
    dense = global_attention(q, k, v, ids)
    valid = np.asarray(ids > 0)
    for block in (64, 100, 512):  # 300 steps = 5 tiles of 64, 3 of 104 or one of 304 (with padding)
        tiled = np.asarray(global_attention(q, k, v, ids, block=block))
        np.testing.assert_allclose(tiled[valid], np.asarray(dense)[valid], atol=1e-6)
        assert np.all(tiled[~valid] == 0)  # padding queries attend to nothing
    # The local branch beyond 2 * LOCAL_BLOCK: banded, against each video's own dense matrix.
    first, second = LOCAL_BLOCK + 140, LOCAL_BLOCK + 100  # both videos cross block boundaries
    long_ids = jnp.asarray(np.repeat([[1] * first + [2] * second + [0] * 60], 3, axis=0), jnp.int32)
    assert long_ids.shape[1] > 2 * LOCAL_BLOCK
    t = jnp.asarray(rng.normal(size=(3, long_ids.shape[1], 8)), jnp.float32)
    for column_norm in (True, False):
        banded = np.asarray(local_attention(t, long_ids, column_norm))
        for start, length in ((0, first), (first, second)):
            alone = local_attention_matrix(length, column_norm=column_norm) @ t[:, start:start + length]
            np.testing.assert_allclose(banded[:, start:start + length], alone, atol=1e-6)
        assert np.all(banded[:, first + second:] == 0)


def test_packed_videos_and_crop_chunks_give_each_video_its_own_scores():
    detector = build_detector(small_config(), seed=4)
    rng = np.random.default_rng(4)
    # One row of 568 + padding: attention past one tile, the local branch banded (> 2 * LOCAL_BLOCK).
    lengths = [330, 190, 45, 3]
    videos = [rng.normal(size=(1, 4, t, 24)).astype(np.float16) for t in lengths]
    row = np.full((1, 4, 620, 24), 7.0, np.float16)  # padding holds garbage
    assert row.shape[2] > 2 * LOCAL_BLOCK
    ids = np.zeros((1, 620), np.int32)
    start = 0
    for slot, (t, x) in enumerate(zip(lengths, videos)):
        row[0, :, start:start + t], ids[0, start:start + t] = x[0], slot + 1
        start += t
    packed = jax.jit(lambda x, i: detector.urdmu.scores(x, segment_ids=i, crop_chunk=2, attention_block=64))(row, ids)
    packed = np.asarray(packed)[0]
    start = 0
    for t, x in zip(lengths, videos):
        alone = np.asarray(jit_scores(detector)(x.astype(np.float32)))[0]
        np.testing.assert_allclose(packed[start:start + t], alone, atol=1e-6, rtol=0)
        start += t
    assert np.all(packed[start:] == 0)
    with pytest.raises(ValueError, match="does not divide"):
        detector.urdmu.scores(row, segment_ids=ids, crop_chunk=3)


def test_bfloat16_compute_keeps_float32_parameters_and_losses_near_float32():
    x = jax.random.normal(jax.random.key(0), (4, 2, 20, 24))
    noise = jax.random.normal(jax.random.key(1), (4, 20, 32))
    f32 = build_detector(small_config(), seed=3)
    bf16 = build_detector(small_config(compute_dtype="bfloat16"), seed=3)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    out32 = jit_train_forward(f32)(x, None, noise)
    out16 = jit_train_forward(bf16)(x, None, noise)
    labels = jnp.array([0.0, 0.0, 1.0, 1.0])
    loss32, loss16 = urdmu_loss(out32, labels)[0], urdmu_loss(out16, labels)[0]
    assert out16["frame"].dtype == jnp.float32 and loss16.dtype == jnp.float32
    np.testing.assert_allclose(out16["frame"], out32["frame"], atol=3e-2)
    assert 0 < abs(float(loss16) - float(loss32)) < 2e-2 * abs(float(loss32))  # bf16 does change it, a little
    np.testing.assert_array_equal(jit_scores(bf16)(x), jit_scores(f32)(x))  # test mode stays float32
    with pytest.raises(ValueError, match="compute_dtype"):
        build_detector(small_config(compute_dtype="float16"))


def test_anchor_quirk_moves_only_anchor_new():
    """model.quirks.anchor_at_abnormal_index (the reference's first commit) changes anchor_new alone."""
    fixed = build_detector(small_config(), seed=0)
    first_commit = build_detector(small_config(quirks={"local_attn_column_norm": True, "kl_sum_over_time": True,
                                                       "anchor_at_abnormal_index": True}), seed=0)
    x = jax.random.normal(jax.random.key(0), (4, 12, 24))
    noise = jax.random.normal(jax.random.key(1), (2, 12, 32))
    out_fixed, out_quirk = (jit_train_forward(d)(x, None, noise) for d in (fixed, first_commit))
    for name in out_fixed:
        if name != "anchor_new":
            np.testing.assert_array_equal(out_fixed[name], out_quirk[name], err_msg=name)
    assert float(jnp.abs(out_fixed["anchor_new"] - out_quirk["anchor_new"]).max()) > 1e-3
