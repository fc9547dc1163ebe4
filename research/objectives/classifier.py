"""Classifier training: augmentation inside the step, and the pure step (its state: state.py).

The loss is the mean softmax cross-entropy of the integer labels. Augmentation runs on the device,
inside the jitted step, from the step's own key (fold_in(rng, step)), so a batch and its
augmentation are both pure functions of (seed, step) and a resumed run sees exactly the images the
uninterrupted one would have:

  none        the images as they are;
  shift       each image moved by a random (dy, dx), each in -2..2 pixels, the uncovered border
              filled with pixel value 0 (black, -1 after scaling): the standard MNIST augmentation;
  shift_flip  a shift, then a left-right mirror with probability 1/2 (for CIFAR-10 and other
              natural images, where a mirrored object is still the same class).
"""
import jax
import jax.numpy as jnp
import optax

from research.data import images_to_float
from research.objectives.state import TrainState, init_train_state

AUGMENTATIONS = ('none', 'shift', 'shift_flip')
MAX_SHIFT = 2


def check_augment(augment: str) -> None:
    if augment not in AUGMENTATIONS:
        raise ValueError(f'unknown augmentation {augment!r}; known: {", ".join(AUGMENTATIONS)}')


def random_shift(x, key, max_shift: int = MAX_SHIFT):
    """Moves each image of x (B, H, W, C) in [-1, 1] by its own random offset in
    -max_shift..max_shift along each axis, filling the uncovered border with -1 (pixel 0)."""
    b, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)), constant_values=-1.0)
    starts = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)
    crop = lambda image, start: jax.lax.dynamic_slice(image, (start[0], start[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, starts)


def augment_images(x, key, augment: str):
    """x (B, H, W, C) in [-1, 1] -> the same shape, augmented as `augment` says (module doc)."""
    check_augment(augment)
    if augment == 'none':
        return x
    k_shift, k_flip = jax.random.split(key)
    x = random_shift(x, k_shift)
    if augment == 'shift_flip':
        flip = jax.random.bernoulli(k_flip, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1], x)
    return x


def init_classifier_state(key, model, tx, image_shape) -> TrainState:
    return init_train_state(key, model, tx, jnp.zeros((2, *image_shape)), train=False)


def make_classifier_step(model, tx, *, augment: str = 'none'):
    """Returns the pure step(state, batch) -> (state, metrics); batch['image'] is uint8 NHWC and
    batch['label'] int32 (B,). Metrics are batch means: `loss` (cross-entropy, nats) and
    `accuracy` (on the augmented training images, in train mode: dropout on)."""
    check_augment(augment)

    def step(state: TrainState, batch):
        k_aug, k_dropout = jax.random.split(jax.random.fold_in(state.rng, state.step))
        x = augment_images(images_to_float(batch['image']), k_aug, augment)
        labels = batch['label']

        def loss_fn(params):
            logits = model.apply({'params': params}, x, train=True, rngs={'dropout': k_dropout})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return jnp.mean(loss), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        metrics = {'loss': loss, 'accuracy': accuracy}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def make_predict_fn(model):
    """(params, uint8 images, key) -> (B,) predicted class, for `DatasetEvaluator` (key unused:
    prediction is deterministic, eval mode)."""
    def predict(params, images, key):
        del key
        logits = model.apply({'params': params}, images_to_float(images), train=False)
        return jnp.argmax(logits, axis=-1)
    return predict
