"""XLA:CPU options deepgen sets for every process that imports it, before JAX starts a backend.

`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`: XLA:CPU (jaxlib 0.10) hands
dots, convolutions and reductions to YNNPACK by default; this removes the convolutions from
that set (the `-` form subtracts from jaxlib's default), giving them back to XLA's Eigen
kernels, which were faster where measured; the rest stays as jaxlib has it. (Naming the set
instead, `=individual_dot`, also dropped YNNPACK's reductions, and with them the char
Transformer's bit-identity of fused and single steps, tests/test_fused.py.) Forward and
backward of one layer at batch 128 on 2 cores of an AMD EPYC (Zen 5, AVX-512; the DCGAN's, ms,
YNNPACK against Eigen): the 5x5 256->128 convolution on 7x7 maps 136 against 87, the stride-2
transposed 128->64 one (sub-pixel form) 63 against 36, the discriminator's 64->128 one 46
against 26; PyTorch's oneDNN took 82, 34 and 29. The whole DCGAN step ran about 20% faster.
Not measured on an Intel machine yet.
Only CPU compilation reads it; GPUs and TPUs ignore it.

A flag already named in the user's own XLA_FLAGS is left as the user set it (for instance
`--xla_cpu_experimental_ynn_fusion_type=` for no YNNPACK at all). JAX reads XLA_FLAGS when it
starts its first backend, so a process that computed with JAX before importing `research` keeps
JAX's defaults.
"""
import os

FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)


def with_flags(xla_flags: str) -> str:
    """`xla_flags` (an XLA_FLAGS value) with each of FLAGS whose name it does not set added."""
    words = xla_flags.split()
    named = {word.split('=', 1)[0] for word in words}
    return ' '.join(words + [flag for flag in FLAGS if flag.split('=', 1)[0] not in named])


def apply(environ=None) -> None:
    environ = os.environ if environ is None else environ
    environ['XLA_FLAGS'] = with_flags(environ.get('XLA_FLAGS', ''))
