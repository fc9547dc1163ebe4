"""Speed kernels: exact fast forms of layers whose plain Flax reference lives beside them.

Each kernel here computes the same function with the same parameters (names, shapes,
initialisers) as a plain reference that a researcher can read and fork instead:

* `convs.py`: `SubpixelConvTranspose`, for the stride-2 `nn.ConvTranspose` in the DCGAN
  generator (`research/models/gan.py`) and the conv VAE decoder (`research/models/vae.py`);
  `StridedConv`, for the DCGAN discriminator's second `nn.Conv`.
* `recurrent.py`: `lstm_scan` and `gru_scan`, LSTM/GRU scans with hand-written backward passes
  and a token path that reads the embedding table inside the scan, for the plain
  `jax.lax.scan` of `lstm_cell`/`gru_cell` in `research/models/recurrent.py`.

Why they exist: all were measured faster on XLA:CPU, and only there (the measurements are in each
file's docstring). On GPU and TPU the plain layers go to cuDNN's or XLA's own kernels, and the
fast forms were never measured there, so `use_fast('auto')` picks them on the CPU only. Each model
takes `fast: bool` to choose. `tests/test_fast_kernels.py` compares every fast kernel with its
plain reference (outputs, gradients, parameter trees); `tests/test_sequence.py` also checks the
scans' backward passes against autodiff and the token path against embedding then layer.
"""
import jax

KERNELS = ('auto', 'fast', 'plain')


def check_kernels(kernels: str) -> None:
    """A config check that touches no JAX backend (multi-process runs initialise theirs later)."""
    if kernels not in KERNELS:
        raise ValueError(f'unknown model.kernels {kernels!r}; known: {", ".join(KERNELS)}')


def use_fast(kernels: str, backend: str | None = None) -> bool:
    """Whether `model.kernels` asks for the fast kernels on `backend` (default: JAX's)."""
    check_kernels(kernels)
    if kernels == 'auto':
        return (backend or jax.default_backend()) == 'cpu'
    return kernels == 'fast'
