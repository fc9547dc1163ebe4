"""LSTM and GRU layers (Linen), in plain form: the cells, their scans and the stacked layers.

`lstm_cell` and `gru_cell` are one step each; `lstm_states` and `gru_states` run them over time
with `jax.lax.scan` and autodiff; `RecurrentLayer` hoists the input projection of all steps out
of the scan (one matmul) and `RNN` stacks layers. Everything is time-major, (T, B, ...).
Gate layouts follow PyTorch (LSTM i, f, g, o; GRU r, z, n with the reset gate applied to the
recurrent term of n), so the cells can be checked against a plain reference and against torch.

`fast=True` (the default) swaps the two scans for the exact fast forms in
`research/models/fast/recurrent.py` (hand-written backward passes; a first layer that reads the
embedding table inside the scan), measured faster on XLA:CPU. Both modes have the same parameters
and compute the same function; `fast=False` is the version to read and fork.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.fast.recurrent import gru_scan, lstm_scan

RNN_KINDS = ('lstm', 'gru')


def lstm_cell(gates_x, carry, w_h):
    """One LSTM step: gates_x (B, 4H) = x W_x + b (precomputed), carry (h, c) -> (h', c')."""
    h, c = carry
    i, f, g, o = jnp.split(gates_x + h @ w_h, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def gru_cell(gates_x, h, w_h, b_h):
    """One GRU step (PyTorch's form): gates_x (B, 3H) = x W_x + b_x, h (B, H) -> h'."""
    xr, xz, xn = jnp.split(gates_x, 3, axis=-1)
    hr, hz, hn = jnp.split(h @ w_h + b_h, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


def lstm_states(gates_x, w_h, unroll: int = 1):
    """All hidden states (T, B, H) of an LSTM from a zero state; gates_x (T, B, 4H)."""
    zeros = jnp.zeros((gates_x.shape[1], w_h.shape[0]), gates_x.dtype)

    def step(carry, g):
        carry = lstm_cell(g, carry, w_h)
        return carry, carry[0]

    return jax.lax.scan(step, (zeros, zeros), gates_x, unroll=unroll)[1]


def gru_states(gates_x, w_h, b_h, unroll: int = 1):
    """All hidden states (T, B, H) of a GRU from a zero state; gates_x (T, B, 3H)."""
    zeros = jnp.zeros((gates_x.shape[1], w_h.shape[0]), gates_x.dtype)

    def step(h, g):
        h = gru_cell(g, h, w_h, b_h)
        return h, h

    return jax.lax.scan(step, zeros, gates_x, unroll=unroll)[1]


def dense2d(layer, x):
    """layer(x) for x (..., D) through a 2-D (N, D) matmul: XLA:CPU runs the weight gradient of
    a 3-D Dense (two contracting axes) about 2x slower than the same product on 2-D operands."""
    return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def _forget_bias_one(key, shape, dtype=jnp.float32):
    """LSTM bias (4H,): 1 for the forget gate, 0 elsewhere, so the cell starts remembering
    (Jozefowicz et al. 2015)."""
    del key
    h = shape[0] // 4
    return jnp.zeros(shape, dtype).at[h:2 * h].set(1.0)


class RecurrentLayer(nn.Module):
    """One LSTM or GRU layer over time-major x (T, B, D) -> (T, B, H), from a zero state.

    With `tokens` (T, B) int, x is instead an embedding table (V, D) and step t reads the rows
    tokens[t]: the same function as embedding then layer. Plain, the rows are gathered first;
    fast, the input projection runs on the V table rows and the scan gathers them."""
    kind: str
    hidden: int
    unroll: int = 1
    fast: bool = True

    @nn.compact
    def __call__(self, x, tokens=None):
        if self.kind not in RNN_KINDS:
            raise ValueError(f'unknown recurrent cell {self.kind!r}; known: {", ".join(RNN_KINDS)}')
        if tokens is not None and not self.fast:
            x, tokens = x[tokens], None
        gates = 4 if self.kind == 'lstm' else 3
        h_dim = self.hidden
        bias_init = _forget_bias_one if self.kind == 'lstm' else nn.initializers.zeros
        # The input projection hoisted out of the scan: one matmul over all steps (or rows).
        inputs = dense2d(nn.Dense(gates * h_dim, bias_init=bias_init, name='input'), x)
        t = (x if tokens is None else tokens).shape[0]
        w_h = self.param('recurrent', nn.initializers.orthogonal(column_axis=-1),
                         (h_dim, gates * h_dim))
        unroll = max(1, min(self.unroll, t))
        if self.kind == 'lstm':
            if self.fast:
                return lstm_scan(inputs, w_h, unroll, tokens)
            return lstm_states(inputs, w_h, unroll)
        b_h = self.param('recurrent_bias', nn.initializers.zeros, (gates * h_dim,))
        if self.fast:
            return gru_scan(inputs, w_h, b_h, unroll, tokens)
        return gru_states(inputs, w_h, b_h, unroll)


class RNN(nn.Module):
    """Stacked LSTM/GRU layers with dropout between them (not after the last: the caller decides
    what follows), as PyTorch's `nn.LSTM(num_layers=L, dropout=p)`. Time-major: x (T, B, D) ->
    (T, B, H); with `tokens` (T, B) int, x is the embedding table of the first layer (see
    `RecurrentLayer`). `fast` picks the scans of research/models/fast/ (same function)."""
    kind: str = 'lstm'
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.0
    unroll: int = 1
    fast: bool = True

    @nn.compact
    def __call__(self, x, *, train: bool, tokens=None):
        for layer in range(self.layers):
            if layer:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            cell = RecurrentLayer(self.kind, self.hidden, self.unroll, self.fast,
                                  name=f'layer{layer}')
            x = cell(x, tokens if layer == 0 else None)
        return x
