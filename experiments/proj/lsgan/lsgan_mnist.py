r"""Least-squares GAN (Mao et al. 2017) on MNIST: a new loss, added from proj/ through the table.

    python -m experiments.proj.lsgan.lsgan_mnist                          # gan_mnist's default
    python -m experiments.proj.lsgan.lsgan_mnist --config=experiments/proj/lsgan/lsgan_mnist.py:mlp

The discriminator regresses real images to 1 and fakes to 0, the generator pulls its fakes'
scores to 1 (the a=0, b=1, c=1 coding of the paper), each a mean of squared errors halved:

    D: (r - 1)^2 / 2 + f^2 / 2        G: (f - 1)^2 / 2

Everything else is gan_mnist's: its presets, config keys and outputs (loss.kind defaults to
'least_squares' here), run with a loss table that has this entry added. Nothing under
research/ changes. Not tuned or measured beyond the test's smoke run.
"""
import jax.numpy as jnp

from experiments import gan_mnist
from research.objectives.gan import LOSSES, GANLoss
from research.train import cli


def least_squares_d(r, f):
    return 0.5 * jnp.mean((r - 1.0) ** 2) + 0.5 * jnp.mean(f ** 2)


def least_squares_g(f):
    return 0.5 * jnp.mean((f - 1.0) ** 2)


TABLE = {**LOSSES, 'least_squares': GANLoss(least_squares_d, least_squares_g)}


def get_config(preset: str = 'default'):
    config = gan_mnist.get_config(preset)
    config.loss.kind = 'least_squares'
    return config


def check_config(config) -> None:
    gan_mnist.check_config(config, losses=TABLE)


def run(config, workdir: str):
    gan_mnist.run(config, workdir, losses=TABLE)


if __name__ == '__main__':  # flags only when run, not when loaded as a config file
    cli.main(__file__, 'lsgan_mnist', run, check_config)
