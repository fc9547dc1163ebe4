"""A deep belief network's log p(v): its variational lower bound and an importance-sampled estimate.

A DBN of L RBM layers (research.models.dbn) is, as a generative model, the top RBM over
h_{L-1} (its hidden units h_L summed out: p(h_{L-1}) = exp(-F_top(h_{L-1})) / Z) with directed
sigmoid layers below, p(h_l | h_{l+1}) = Bernoulli(sigmoid(b_v^l + W_l h_{l+1})), h_0 = v. Layer
l's W_l and b_v^l are generative; its W_l read upwards with b_h^l is the recognition model
q(h_{l+1} | h_l) = Bernoulli(sigmoid(b_h^l + h_l W_l)) (after up-down fine-tuning the
recognition weights are untied: pass them as `recognition`). With h = (h_1, ..., h_{L-1}) drawn
from q by sampling each layer in turn,

  log p(v) >= E_q[log p*(v, h)] + H(q(h | v)) - log Z                   (the variational bound)
            = log p(v) - KL(q(h | v) || p(h | v))

where log p*(v, h) = sum_{l < L-1} log p(h_l | h_{l+1}) - F_top(h_{L-1}) (Hinton, Osindero & Teh
2006, eq. 8; Salakhutdinov & Murray 2008, section 5). The entropies of each layer's factorial
q given the sampled layer below are summed analytically, so only E_q[log p*] is a Monte Carlo
average. With one layer the bound is the RBM's own log p(v) = -F(v) - log Z. The importance-
sampled estimate log mean_k p*(v, h^k) / q(h^k | v) - log Z with k draws from q is a tighter
stochastic lower bound (its expectation rises to log p(v) as k grows; Burda et al. 2016). Both
take the top RBM's log Z: exact for few hidden units (research.evals.ais.exact_log_partition),
else AIS, whose error adds to the estimate's (AIS tends to underestimate log Z, so to
overestimate log p(v)).
"""
import jax
import jax.numpy as jnp

from research.models import dbn as dbn_lib
from research.models import rbm as rbm_lib


def _check(layers, recognition):
    dbn_lib.check_layers(layers)
    recognition = dbn_lib.tied_recognition(layers) if recognition is None else recognition
    if len(recognition) != len(layers) - 1:
        raise ValueError(f'a DBN of {len(layers)} layers has {len(layers) - 1} recognition '
                         f'layers, got {len(recognition)}')
    for l, (r, g) in enumerate(zip(recognition, layers)):
        if r['w'].shape != g['w'].shape:
            raise ValueError(f'recognition layer {l} has weights {r["w"].shape}, the generative '
                             f'layer {g["w"].shape}')
    return recognition


def log_joint(layers, v, states):
    """log p*(v, h_1..h_{L-1}) = sum_l log p(h_l | h_{l+1}) - F_top(h_{L-1}), unnormalised by
    the top RBM's Z: (B,). With one layer (no states) -F(v)."""
    chain = [v, *states]
    return dbn_lib.log_directed(layers[:-1], chain) - rbm_lib.free_energy(layers[-1], chain[-1])


def variational_bound(layers, v, key, log_z, *, samples: int = 1, recognition=None):
    """Per-example E_q[log p*(v, h)] + H(q) - log Z, E_q over `samples` draws: (B,) in nats.

    Exact (no sampling) for one layer. `recognition` defaults to the tied weights."""
    recognition = _check(layers, recognition)
    if samples < 1:
        raise ValueError(f'the bound needs samples >= 1, got {samples}')
    if not recognition:
        return log_joint(layers, v, []) - log_z

    def one(key):
        chain, entropy = dbn_lib.sample_up(recognition, v, key)
        return log_joint(layers, v, chain[1:]) + entropy

    return jnp.mean(jax.vmap(one)(jax.random.split(key, samples)), axis=0) - log_z


def importance_log_likelihood(layers, v, key, log_z, *, k: int, recognition=None):
    """Per-example log mean_k p*(v, h^k) / q(h^k | v) - log Z, h^k ~ q: (B,) in nats."""
    recognition = _check(layers, recognition)
    if k < 1:
        raise ValueError(f'the importance-sampled estimate needs k >= 1, got {k}')
    if not recognition:
        return log_joint(layers, v, []) - log_z

    def one(key):
        chain, _ = dbn_lib.sample_up(recognition, v, key)
        return log_joint(layers, v, chain[1:]) - dbn_lib.log_recognition(recognition, chain)

    log_w = jax.lax.map(one, jax.random.split(key, k))  # (k, B): one draw's memory at a time
    return jax.nn.logsumexp(log_w, axis=0) - jnp.log(float(k)) - log_z
