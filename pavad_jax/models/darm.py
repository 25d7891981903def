"""PA-VAD's DARM pieces that hold parameters or custom gradients: gradient reversal and
the domain discriminator (pa-vad.md Sec. 3.2, Eq. 12). The losses live in pavad_jax/losses.py."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pavad_jax.models.urdmu import torch_linear


@jax.custom_vjp
def gradient_reversal(x: jax.Array, strength: jax.Array) -> jax.Array:
    """Identity forward; the backward pass multiplies the gradient by -strength (DANN's GRL)."""
    return x


def _reversal_fwd(x, strength):
    return x, strength


def _reversal_bwd(strength, g):
    # `strength` is a traced loss weight (lambda_da); it receives no gradient.
    return (-strength * g).astype(g.dtype), jnp.zeros_like(strength)


gradient_reversal.defvjp(_reversal_fwd, _reversal_bwd)


class DomainDiscriminator(nnx.Module):
    """A small MLP: pooled video feature (d,) -> one logit (real 0 vs pseudo 1)."""

    def __init__(self, in_features: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
        sizes = [in_features, *[int(h) for h in hidden], 1]
        self.layers = nnx.List([torch_linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., d) -> (...) logits."""
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)[..., 0]
