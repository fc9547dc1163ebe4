"""Elementwise functions (and the Bernoulli sums over them) written for exactness and speed,
shared by models, objectives and evals."""
import jax
import jax.numpy as jnp


def softplus(x):
    """log(1 + e^x), exact for large |x| (neither e^x overflows nor 1 + e^x rounds to 1).

    4x faster on XLA:CPU than jax.nn.softplus (logaddexp's extra work), which matters where it
    runs most: an RBM's free energy in every CD step and AIS sweep, and the Bernoulli likelihood
    of 784 pixels x 5,000 importance samples in the VAE's evaluation.
    """
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def bernoulli_log_prob(x, logits):
    """sum_i log Bernoulli(x_i; sigmoid(logits_i)) over the last axis, for x in {0, 1}."""
    return jnp.sum(x * logits - softplus(logits), axis=-1)


def bernoulli_entropy(logits):
    """sum_i H(Bernoulli(sigmoid(logits_i))) over the last axis, in nats."""
    return jnp.sum(softplus(logits) - logits * jax.nn.sigmoid(logits), axis=-1)
