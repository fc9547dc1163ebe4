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
Only CPU compilation reads it; GPUs and TPUs ignore it. One program may go further, for itself
alone: `without_ynnpack()` gives per-jit compiler options with no YNNPACK at all, where that was
measured faster (char_lm's Transformer step on AVX2 x86 CPUs without AVX-512).

A flag already named in the user's own XLA_FLAGS is left as the user set it (for instance
`--xla_cpu_experimental_ynn_fusion_type=` for no YNNPACK at all). JAX reads XLA_FLAGS when it
starts its first backend, so a process that computed with JAX before importing `research` keeps
JAX's defaults.
"""
import os

YNN = 'xla_cpu_experimental_ynn_fusion_type'
FLAGS = (f'--{YNN}=-individual_convolution',)
_user_named: set[str] = set()  # the flag names the user's own XLA_FLAGS set, seen by apply()


def with_flags(xla_flags: str) -> str:
    """`xla_flags` (an XLA_FLAGS value) with each of FLAGS whose name it does not set added."""
    words = xla_flags.split()
    named = {word.split('=', 1)[0] for word in words}
    return ' '.join(words + [flag for flag in FLAGS if flag.split('=', 1)[0] not in named])


def apply(environ=None, named: set | None = None) -> None:
    """Adds FLAGS to `environ`'s XLA_FLAGS (default os.environ's), recording in `named`
    (default: this module's record, which without_ynnpack reads) the flags the user had set."""
    environ = os.environ if environ is None else environ
    named = _user_named if named is None else named
    xla_flags = environ.get('XLA_FLAGS', '')
    named.update(word.split('=', 1)[0] for word in xla_flags.split())
    environ['XLA_FLAGS'] = with_flags(xla_flags)


def avx2_without_avx512(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text describes an x86 CPU with AVX2 and without AVX-512."""
    for line in cpuinfo.splitlines():
        if line.startswith('flags'):
            flags = set(line.split(':', 1)[1].split())
            return 'avx2' in flags and 'avx512f' not in flags
    return False


def _cpuinfo() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return f.read()
    except OSError:  # not Linux: no rule applies
        return ''


def without_ynnpack(backend: str | None = None, cpuinfo: str | None = None,
                    user_named=None) -> dict:
    """Per-jit compiler options that keep YNNPACK out of one program, where that was measured
    faster: `jax.jit(f, compiler_options=without_ynnpack())`, else {} (jaxlib's choice stands).

    The char Transformer's step on 2 cores of an AMD EPYC (Zen 3, AVX2, no AVX-512): YNNPACK's
    dots took about 48 ms of the baby GPT's step, Eigen's about 22; the whole step ran about
    1.25x faster without YNNPACK (benchmarks/bench.py transformer, alternating). On a Zen 5 EPYC
    (AVX-512) YNNPACK's dots were the faster, and the MLP GAN and the RBM lose about 10% without
    YNNPACK even on Zen 3, so the rule is narrow: the CPU backend, an x86 CPU with AVX2 and no
    AVX-512, and no --xla_cpu_experimental_ynn_fusion_type in the user's own XLA_FLAGS.
    """
    backend = _default_backend() if backend is None else backend
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    user_named = _user_named if user_named is None else user_named
    if backend != 'cpu' or f'--{YNN}' in user_named or not avx2_without_avx512(cpuinfo):
        return {}
    return {YNN: ''}


def _default_backend() -> str:
    import jax  # here, not at the top: this module runs before JAX starts a backend
    return jax.default_backend()
