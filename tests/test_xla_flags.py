"""research/xla_flags.py: importing research gives XLA:CPU's convolutions to Eigen and leaves
its dots with YNNPACK (jaxlib's default hands both to YNNPACK), and a flag the user names
stands; without_ynnpack() keeps YNNPACK out of one program only on an x86 CPU with AVX2 and no
AVX-512, and the loop's step and fused steps compile with it."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from conftest import REPO
from research import xla_flags
from research.data import BatchPipeline
from research.train import fused, mesh as mesh_lib

FLAG = '--xla_cpu_experimental_ynn_fusion_type'

# Which ops of a compiled convolution-then-product landed in a YNNPACK fusion.
PROBE = '''
import os, sys
os.environ.pop('XLA_FLAGS', None)
if sys.argv[1] == 'research':
    import research
import jax, numpy as np
x, w, m = (np.random.default_rng(0).standard_normal(s, np.float32)
           for s in ((8, 14, 14, 16), (5, 5, 16, 32), (32, 8)))
f = jax.jit(lambda x, w, m: jax.nn.relu(jax.lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))) @ m)
text = f.lower(x, w, m).compile().as_text()
ynn = [line for line in text.splitlines() if '= ' in line and 'ynn_fusion' in line.split('=')[0]]
print(sorted({op for line in ynn for op in ('conv_general_dilated', 'dot_general') if op in line}))
'''


def ynn_ops(mode):
    done = subprocess.run([sys.executable, '-c', PROBE, mode], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_convolutions_go_to_eigen_and_dots_stay_with_ynnpack():
    assert ynn_ops('jax') == "['conv_general_dilated', 'dot_general']"  # jaxlib's default
    assert ynn_ops('research') == "['dot_general']"


def test_a_flag_the_user_set_is_kept_and_none_is_doubled():
    ours = f'{FLAG}=-individual_convolution'  # jaxlib's default set, less convolutions
    assert xla_flags.with_flags('') == ours
    assert xla_flags.with_flags('--xla_force_host_platform_device_count=8') == (
        f'--xla_force_host_platform_device_count=8 {ours}')
    assert xla_flags.with_flags(f'{FLAG}=') == f'{FLAG}='  # the user's: no YNNPACK at all
    assert xla_flags.with_flags(xla_flags.with_flags('')) == ours
    environ, named = {}, set()
    xla_flags.apply(environ, named)
    assert environ == {'XLA_FLAGS': ours} and named == set()
    environ = {'XLA_FLAGS': f'--xla_force_host_platform_device_count=8 {FLAG}='}
    xla_flags.apply(environ, named)
    assert environ['XLA_FLAGS'].endswith(f'{FLAG}=') and FLAG in named


# /proc/cpuinfo's flags line, cut to what the rule reads, from the machines measured.
ZEN3 = 'processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse4_2 avx f16c avx2 fma bmi2\n'
ZEN5 = ZEN3.replace('avx2 fma', 'avx2 fma avx512f avx512bw avx512_bf16')
ARM = 'processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n'
OLD_X86 = ZEN3.replace(' avx2', '')


def test_the_cpu_rule_reads_the_flags_line():
    assert xla_flags.avx2_without_avx512(ZEN3)
    assert not xla_flags.avx2_without_avx512(ZEN5)
    assert not xla_flags.avx2_without_avx512(ARM)
    assert not xla_flags.avx2_without_avx512(OLD_X86)
    assert not xla_flags.avx2_without_avx512('')
    assert not xla_flags.avx2_without_avx512(ZEN3.replace('avx2', 'avx2_vnni'))  # whole words


def test_without_ynnpack_only_on_the_cpu_measured_and_never_over_the_user():
    off = {'xla_cpu_experimental_ynn_fusion_type': ''}
    assert xla_flags.without_ynnpack('cpu', ZEN3, set()) == off
    assert xla_flags.without_ynnpack('cpu', ZEN5, set()) == {}
    assert xla_flags.without_ynnpack('cpu', ARM, set()) == {}
    assert xla_flags.without_ynnpack('gpu', ZEN3, set()) == {}
    assert xla_flags.without_ynnpack('tpu', ZEN3, set()) == {}
    assert xla_flags.without_ynnpack('cpu', ZEN3, {FLAG}) == {}  # the user's XLA_FLAGS named it
    assert xla_flags.without_ynnpack('cpu', ZEN3, {'--xla_cpu_use_thunk_runtime'}) == off


def ynn_fusions(compiled) -> int:
    return compiled.as_text().count('ynn_fusion')


def test_the_step_and_the_fused_steps_compile_with_the_options():
    # A step of two products: jaxlib hands its dots to YNNPACK unless the options say not.
    def step(state, batch):
        loss, grad = jax.value_and_grad(
            lambda w: jnp.mean((jnp.tanh(batch['x'] @ w) @ w.T - batch['x']) ** 2))(state['w'])
        return {'w': state['w'] - 0.1 * grad}, {'loss': loss}

    off = {'xla_cpu_experimental_ynn_fusion_type': ''}
    mesh = mesh_lib.data_mesh(jax.devices()[:1])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    state = {'w': jnp.asarray(rng.standard_normal((32, 32)).astype(np.float32))}
    batch = {'x': jnp.asarray(x[:16])}
    compile_step = lambda options: mesh_lib.jit_step(step, mesh, options).lower(
        state, batch).compile()
    assert ynn_fusions(compile_step(None)) > 0 and ynn_fusions(compile_step(off)) == 0
    pipeline = BatchPipeline({'x': x}, 16, seed=0)
    fused_steps = lambda options: fused.FusedSteps(step, pipeline, mesh, 2, options)
    lowered = lambda f: f._jitted.lower(state, f.data, f.indices(0)).compile()
    assert ynn_fusions(lowered(fused_steps(None))) > 0
    assert ynn_fusions(lowered(fused_steps(off))) == 0
