"""The fused threefry in pavad_jax.random_bits reproduces jax.random bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pavad_jax import random_bits


@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 5), (4, 33, 17)])
def test_bits_equal_jax_random_bits(shape):
    for seed in (0, 1, 12345):
        key = jax.random.key(seed)
        np.testing.assert_array_equal(jax.jit(random_bits.bits, static_argnums=1)(key, shape),
                                      jax.random.bits(key, shape, jnp.uint32))


@pytest.mark.parametrize("p", [0.5, 0.9, 0.1, 1 / 3, 0.0, 1.0])
def test_bernoulli_equals_jax_random_bernoulli(p):
    for seed in range(3):
        key = jax.random.fold_in(jax.random.key(7), seed)
        mask = jax.jit(random_bits.bernoulli, static_argnums=(1, 2))(key, p, (8, 50, 64))
        np.testing.assert_array_equal(mask, jax.random.bernoulli(key, p, (8, 50, 64)))


def test_normal_equals_jax_random_normal_and_is_standard():
    key = jax.random.key(3)
    draws = jax.jit(random_bits.normal, static_argnums=1)(key, (4, 200, 128))
    np.testing.assert_array_equal(draws, jax.random.normal(key, (4, 200, 128)))
    assert abs(float(draws.mean())) < 0.01 and abs(float(draws.std()) - 1.0) < 0.01


def test_split_keys_give_different_masks():
    a, b = jax.random.split(jax.random.key(0))
    assert float((random_bits.bernoulli(a, 0.5, (1000,)) != random_bits.bernoulli(b, 0.5, (1000,))).mean()) > 0.4


def test_other_key_implementations_fall_back_to_jax_random():
    key = jax.random.key(5, impl="rbg")
    np.testing.assert_array_equal(random_bits.bits(key, (6, 4)), jax.random.bits(key, (6, 4), jnp.uint32))


def test_sharded_draw_equals_the_unsharded_one():
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    sharding = NamedSharding(mesh, P("data"))
    key = jax.random.key(11)
    sharded = jax.jit(lambda k: random_bits.bernoulli(k, 0.5, (8, 30, 16)), out_shardings=sharding)(key)
    assert sharded.sharding == sharding
    np.testing.assert_array_equal(sharded, jax.random.bernoulli(key, 0.5, (8, 30, 16)))
