"""Character language modelling: the pure next-character step (its state: state.py, its optimizer:
optim.py), per-window log-likelihoods for exact evaluation, and generation as one jitted
`lax.scan`.

A batch is {'tokens': int32 (B, T + 1)}: inputs are tokens[:, :-1], targets tokens[:, 1:]. The
loss is the mean next-character cross-entropy in nats. Dropout draws from fold_in(rng, step), so
a resumed run repeats the uninterrupted one exactly.
"""
import jax
import jax.numpy as jnp
import optax

from research.objectives.state import TrainState, init_train_state


def init_lm_state(key, model, tx, seq_len: int) -> TrainState:
    return init_train_state(key, model, tx, jnp.zeros((2, seq_len), jnp.int32), train=False)


def token_nll(logits, targets):
    """Per-position -log p(target) in nats, float32 (B, T)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def make_lm_step(model, tx):
    """Returns the pure step(state, batch) -> (state, metrics); metrics: `loss` (mean nats/char
    over the batch, dropout on) and `grad_norm` (before clipping)."""
    def step(state: TrainState, batch):
        tokens = batch['tokens']
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        key = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            logits = model.apply({'params': params}, inputs, train=True, rngs={'dropout': key})
            return jnp.mean(token_nll(logits, targets))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def window_nll_fn(model):
    """(params, windows int32 (B, T + 1) padded with -1, key) -> (B,) summed nats over the valid
    targets of each window, for `DatasetEvaluator` (key unused: eval mode, no dropout)."""
    def fn(params, windows, key):
        del key
        inputs, targets = jnp.maximum(windows[:, :-1], 0), windows[:, 1:]
        logits = model.apply({'params': params}, inputs, train=False)
        nll = token_nll(logits, jnp.maximum(targets, 0))
        return jnp.sum(jnp.where(targets >= 0, nll, 0.0), axis=1)
    return fn


def sample_logits(key, logits, temperature, top_k: int):
    """One draw per row of logits (B, V) at `temperature` (> 0), from the `top_k` most likely
    tokens only (0: all). top_k=1 is greedy decoding."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def make_generate(model, context: int, num_new: int, *, top_k: int = 0):
    """generate(params, prompt int32 (B, P >= 1), key, temperature) -> (B, P + num_new) tokens.

    One jitted `lax.scan` over the new characters. Each step runs the model on the last `context`
    tokens and reads the logits at the newest one: since the models are causal, the not yet written
    (zero) positions after it cannot change them, so every step has one fixed shape. An RNN thus
    sees at most `context` characters, as in training. Character i is drawn with
    fold_in(key, i): the same key gives the same text.
    """
    @jax.jit
    def generate(params, prompt, key, temperature):
        b, p = prompt.shape
        length = max(p + num_new, context)
        buffer = jnp.zeros((b, length), jnp.int32).at[:, :p].set(prompt)

        def body(buffer, i):
            current = p + i  # the position written by this step
            start = jnp.clip(current - context, 0, length - context)
            window = jax.lax.dynamic_slice(buffer, (0, start), (b, context))
            logits = model.apply({'params': params}, window, train=False)
            last = jax.lax.dynamic_index_in_dim(logits, current - 1 - start, 1, keepdims=False)
            token = sample_logits(jax.random.fold_in(key, i), last, temperature, top_k)
            return jax.lax.dynamic_update_slice(buffer, token[:, None], (0, current)), None

        buffer, _ = jax.lax.scan(body, buffer, jnp.arange(num_new))
        return buffer[:, :p + num_new]

    return generate
