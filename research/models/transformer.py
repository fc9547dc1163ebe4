"""A decoder-only Transformer language model (Linen): GPT-2's shape with pre-norm blocks, causal
self-attention, learned or rotary positions and optional weight tying.

Activations inside the blocks are (B*T, C), flattened once after the embedding: every
projection is then a 2-D matmul (see research.models.recurrent.dense2d for why that matters on
XLA:CPU), and attention reshapes to (B, T, heads, d) only where it needs the time axis.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

POSITIONS = ('learned', 'rope')


def rotary(x, positions):
    """Rotary position embedding (Su et al. 2021) of x (B, T, heads, d), d even: pairs of
    channels rotate by position-dependent angles, so q.k depends on relative position only."""
    d = x.shape[-1]
    freqs = 1.0 / (10000.0 ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions[:, None].astype(jnp.float32) * freqs  # (T, d/2)
    cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention on x (B*T, C) flattened from (B, T, C) (`seq_len` = T):
    the projections run as 2-D matmuls (see `dense2d`), the attention per (batch, head)."""
    heads: int
    seq_len: int
    dropout: float = 0.0
    positions: str = 'learned'

    @nn.compact
    def __call__(self, x, *, train: bool):
        n, width = x.shape
        t = self.seq_len
        if width % self.heads:
            raise ValueError(f'width {width} must be a multiple of heads {self.heads}')
        head_dim = width // self.heads
        qkv = nn.Dense(3 * width, name='qkv')(x).reshape(n // t, t, 3, self.heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.positions == 'rope':
            q, k = rotary(q, jnp.arange(t)), rotary(k, jnp.arange(t))
        logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_dim).astype(x.dtype)
        causal = jnp.tril(jnp.ones((t, t), bool))
        weights = jax.nn.softmax(jnp.where(causal, logits, jnp.finfo(x.dtype).min), axis=-1)
        weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
        y = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(n, width)
        return nn.Dense(width, name='proj')(y)


class Block(nn.Module):
    """Pre-norm Transformer block on x (B*T, C): x + attn(LN(x)), then x + MLP(LN(x)), with a
    4x GELU MLP."""
    heads: int
    seq_len: int
    dropout: float = 0.0
    positions: str = 'learned'

    @nn.compact
    def __call__(self, x, *, train: bool):
        drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
        width = x.shape[-1]
        x = x + drop(CausalSelfAttention(self.heads, self.seq_len, self.dropout,
                                         self.positions)(nn.LayerNorm()(x), train=train))
        y = nn.Dense(4 * width)(nn.LayerNorm()(x))
        return x + drop(nn.Dense(width)(nn.gelu(y, approximate=False)))


class Transformer(nn.Module):
    """Decoder-only Transformer LM (GPT-2 shape): tokens (B, T <= context) -> (B, T, vocab)."""
    vocab: int
    layers: int = 4
    heads: int = 4
    width: int = 128
    context: int = 64
    dropout: float = 0.0
    positions: str = 'learned'
    tie_weights: bool = True

    @nn.compact
    def __call__(self, tokens, *, train: bool = False):
        if self.positions not in POSITIONS:
            raise ValueError(f'unknown positions {self.positions!r}; known: {", ".join(POSITIONS)}')
        t = tokens.shape[1]
        if t > self.context:
            raise ValueError(f'sequence length {t} exceeds the context {self.context}')
        init = nn.initializers.normal(0.02)
        embed = nn.Embed(self.vocab, self.width, embedding_init=init, name='embed')
        x = embed(tokens)
        if self.positions == 'learned':
            x = x + self.param('pos', init, (self.context, self.width))[:t]
        x = nn.Dropout(self.dropout, deterministic=not train)(x).reshape(-1, self.width)
        for i in range(self.layers):
            x = Block(self.heads, t, self.dropout, self.positions, name=f'block{i}')(
                x, train=train)
        x = nn.LayerNorm(name='ln_f')(x)
        logits = embed.attend(x) if self.tie_weights else nn.Dense(self.vocab, name='head')(x)
        return logits.reshape(*tokens.shape, self.vocab)
