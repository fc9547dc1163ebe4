"""GAN generators and discriminators for 28x28x1 images in [-1, 1]. Math only.

DCGAN (our design):
    G: z(100) -> Dense 7*7*256 -> BN -> LReLU -> ConvT 5x5 128 /1 -> BN -> LReLU
              -> ConvT 5x5 64 /2 -> BN -> LReLU -> ConvT 5x5 1 /2 -> tanh
    D: Conv 5x5 64 /2 -> LReLU(0.2) -> Dropout 0.3 -> Conv 5x5 128 /2 -> LReLU -> Dropout 0.3
              -> Dense 1
MLP GAN: G 100-256-256-784 (LReLU, tanh out), D 784-256-256-1 (LReLU).

Class-conditional DCGAN (`num_classes` K > 0; both modules then take integer `labels` (B,) after
their first argument): G's three BatchNorms become conditional batch norm (de Vries et al. 2017;
BigGAN): the normalisation and running statistics are shared, the scale and shift are looked up
per class (initialised to 1 and 0, so the initial G is the unconditional one); D is a projection
discriminator (Miyato & Koyama 2018): logit = Dense(phi(x)) + <embed(y), phi(x)>, phi the flat
features before the last layer. With K = 0 the modules, their parameters and their names are
exactly the unconditional ones.

With `fast=True` (the default) the generator's stride-2 transposed convolutions and the
discriminator's second convolution are the exact fast forms in `research/models/fast/convs.py`
(same parameters, same function as `nn.ConvTranspose` and `nn.Conv`, measured faster on XLA:CPU;
see that file);
`fast=False` uses `nn.ConvTranspose` and `nn.Conv` themselves. The
discriminators return logits, shape (B,); the losses live in `research/objectives/gan.py`.
"""
import flax.linen as nn
import jax.numpy as jnp

from research.models.fast.convs import StridedConv, SubpixelConvTranspose

LEAK = 0.2
# DCGAN practice (Radford et al. 2016): weights from N(0, 0.02), BN momentum 0.9.
_init = nn.initializers.normal(0.02)


def _conv_transpose(features: int, strides: int, name: str, fast: bool) -> nn.Module:
    """The generator's 5x5 'SAME' bias-free transposed convolution, plain or in its fast form
    (stride 2 only: at stride 1 XLA's own convolution is the fastest form measured)."""
    if not fast or strides == 1:
        return nn.ConvTranspose(features, (5, 5), strides=(strides, strides), padding='SAME',
                                use_bias=False, kernel_init=_init, name=name)
    return SubpixelConvTranspose(features, 5, strides, use_bias=False, kernel_init=_init,
                                 name=name)


def _conv(features: int, name: str, fast: bool) -> nn.Module:
    """The discriminator's 5x5 stride-2 'SAME' convolution, plain or with its fast input
    gradient; nn.Conv's auto names in both modes."""
    if fast:
        return StridedConv(features, 5, 2, kernel_init=_init, name=name)
    return nn.Conv(features, (5, 5), strides=(2, 2), padding='SAME', kernel_init=_init, name=name)


def _check_labels(module: nn.Module, labels) -> None:
    """Labels exactly when the module is conditional: a missing or stray argument is a bug."""
    if (labels is None) != (module.num_classes == 0):
        raise ValueError(f'{type(module).__name__}(num_classes={module.num_classes}) '
                         f'{"needs" if module.num_classes else "takes no"} labels')


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose scale and shift are looked up by class: (x, labels (B,)) -> x."""
    num_classes: int
    use_running_average: bool
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, labels):
        x = nn.BatchNorm(use_running_average=self.use_running_average, momentum=self.momentum,
                         use_scale=False, use_bias=False)(x)
        shape = (-1,) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        scale = nn.Embed(self.num_classes, x.shape[-1], embedding_init=nn.initializers.ones,
                         name='scale')(labels)
        shift = nn.Embed(self.num_classes, x.shape[-1], embedding_init=nn.initializers.zeros,
                         name='shift')(labels)
        return x * scale.reshape(shape) + shift.reshape(shape)


class DCGANGenerator(nn.Module):
    image_shape: tuple[int, int, int] = (28, 28, 1)
    base: int = 256
    fast: bool = True
    num_classes: int = 0  # K > 0: conditional batch norm, and __call__(z, labels)

    @nn.compact
    def __call__(self, z, labels=None, *, train: bool):
        h, w, c = self.image_shape
        if h % 4 or w % 4:
            raise ValueError(f'DCGANGenerator upsamples 4x: image_shape {self.image_shape} '
                             'must divide by 4')
        _check_labels(self, labels)
        if self.num_classes:
            bn = lambda x: ConditionalBatchNorm(self.num_classes, not train)(x, labels)
        else:
            bn = lambda x: nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.Dense(h // 4 * w // 4 * self.base, use_bias=False, kernel_init=_init)(z)
        x = nn.leaky_relu(bn(x), LEAK).reshape(-1, h // 4, w // 4, self.base)
        # The fast layers' Flax auto names in both modes: initial values derive from the names.
        # (The first is named for the Fourier-domain form it once had, so checkpoints load.)
        x = _conv_transpose(self.base // 2, 1, 'FourierConvTranspose_0', self.fast)(x)
        x = nn.leaky_relu(bn(x), LEAK)
        x = _conv_transpose(self.base // 4, 2, 'SubpixelConvTranspose_0', self.fast)(x)
        x = nn.leaky_relu(bn(x), LEAK)
        x = _conv_transpose(c, 2, 'SubpixelConvTranspose_1', self.fast)(x)
        return jnp.tanh(x)


class DCGANDiscriminator(nn.Module):
    width: int = 64
    dropout: float = 0.3
    num_classes: int = 0  # K > 0: a projection discriminator, __call__(x, labels)
    fast: bool = True

    @nn.compact
    def __call__(self, x, labels=None, *, train: bool):
        _check_labels(self, labels)
        for i, features in enumerate((self.width, 2 * self.width)):
            # The first layer reads the image (1 channel), where XLA's own input gradient is
            # the faster (see StridedConv).
            x = _conv(features, f'Conv_{i}', self.fast and i > 0)(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(nn.leaky_relu(x, LEAK))
        phi = x.reshape(x.shape[0], -1)
        logit = nn.Dense(1, kernel_init=_init)(phi)[:, 0]
        if self.num_classes:
            embed = nn.Embed(self.num_classes, phi.shape[-1], embedding_init=_init,
                             name='projection')(labels)
            logit = logit + jnp.sum(embed * phi, axis=-1)
        return logit


class MLPGenerator(nn.Module):
    image_shape: tuple[int, int, int] = (28, 28, 1)
    hidden: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, z, *, train: bool):
        del train  # no batch statistics or dropout; the keyword keeps one calling convention
        x = z
        for width in self.hidden:
            x = nn.leaky_relu(nn.Dense(width)(x), LEAK)
        size = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        return jnp.tanh(nn.Dense(size)(x)).reshape(-1, *self.image_shape)


class MLPDiscriminator(nn.Module):
    hidden: tuple[int, ...] = (256, 256)

    @nn.compact
    def __call__(self, x, *, train: bool):
        del train
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.leaky_relu(nn.Dense(width)(x), LEAK)
        return nn.Dense(1)(x)[:, 0]


ARCHS = ('dcgan', 'mlp')


def make_gan(arch: str, image_shape=(28, 28, 1), *, fast: bool = True, num_classes: int = 0,
             g_width: int = DCGANGenerator.base, d_width: int = DCGANDiscriminator.width,
             d_dropout: float = DCGANDiscriminator.dropout) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for an architecture name from ARCHS; `fast` picks the DCGAN's
    kernels (the MLP has none); `num_classes` K > 0 makes the DCGAN conditional; the DCGAN's
    G channels (`g_width` after the dense layer), D channels (`d_width`, then twice that) and
    D dropout are its fields above (the MLP ignores them)."""
    if arch == 'dcgan':
        return (DCGANGenerator(image_shape=image_shape, base=g_width, fast=fast,
                               num_classes=num_classes),
                DCGANDiscriminator(width=d_width, dropout=d_dropout, num_classes=num_classes,
                                   fast=fast))
    if num_classes:
        raise ValueError(f'only the dcgan architecture is class-conditional, not {arch!r}')
    if arch == 'mlp':
        return MLPGenerator(image_shape=image_shape), MLPDiscriminator()
    raise ValueError(f'unknown GAN architecture {arch!r}; known: {", ".join(ARCHS)}')
