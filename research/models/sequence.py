"""Sequence models (Linen): a character LM over recurrent layers and a row-wise image classifier,
and `make_char_model`, which builds either that LM or the Transformer (transformer.py). The
LSTM/GRU layers themselves are in recurrent.py; `fast` picks their fast scans (same function).
"""
import flax.linen as nn
import jax.numpy as jnp

from research.models.recurrent import RNN, RNN_KINDS, dense2d
from research.models.transformer import Transformer


class CharRNN(nn.Module):
    """Character LM: embedding -> RNN -> dropout -> logits. tokens (B, T) int -> (B, T, vocab)."""
    vocab: int
    kind: str = 'lstm'
    embed: int = 64
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.0
    unroll: int = 1
    fast: bool = True

    @nn.compact
    def __call__(self, tokens, *, train: bool = False):
        # The first layer reads the embedding table through the tokens: embedding then LSTM/GRU
        # without a (B*T, embed) activation or its (B*T, embed) x (embed, G*H) products. The
        # layers run time-major; only the logits, the smallest array, are transposed back.
        table = nn.Embed(self.vocab, self.embed).embedding
        x = RNN(self.kind, self.hidden, self.layers, self.dropout, self.unroll, self.fast)(
            table, train=train, tokens=tokens.T)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return jnp.swapaxes(dense2d(nn.Dense(self.vocab, name='head'), x), 0, 1)


class RowLSTMClassifier(nn.Module):
    """Reads an image (B, H, W, C) in [-1, 1] row by row (H steps of W*C values) with a stacked
    LSTM/GRU and classifies from the last hidden state. Same call signature as the image
    classifiers, so their state, step and evaluator apply unchanged."""
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.0
    classes: int = 10
    kind: str = 'lstm'
    unroll: int = 1
    fast: bool = True

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        rows = x.reshape(*x.shape[:2], -1)
        hs = RNN(self.kind, self.hidden, self.layers, self.dropout, self.unroll, self.fast)(
            jnp.swapaxes(rows, 0, 1), train=train)  # time-major
        last = nn.Dropout(self.dropout, deterministic=not train)(hs[-1])
        return nn.Dense(self.classes, name='head')(last)


def make_char_model(kind: str, vocab: int, *, embed: int = 64, hidden: int = 256,
                    layers: int = 1, heads: int = 4, width: int = 128, context: int = 64,
                    dropout: float = 0.0, positions: str = 'learned', tie_weights: bool = True,
                    unroll: int = 1, fast: bool = True) -> nn.Module:
    """The character LM for `kind` (lstm, gru, transformer); other kinds' fields are ignored
    (`fast` too by the Transformer, which has no fast kernels)."""
    if kind in RNN_KINDS:
        return CharRNN(vocab, kind, embed, hidden, layers, dropout, unroll, fast)
    if kind == 'transformer':
        return Transformer(vocab, layers, heads, width, context, dropout, positions, tie_weights)
    raise ValueError(f'unknown model kind {kind!r}; known: {", ".join(RNN_KINDS)}, transformer')
