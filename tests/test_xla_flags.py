"""research/xla_flags.py: importing research gives XLA:CPU's convolutions to Eigen and leaves
its dots with YNNPACK (jaxlib's default hands both to YNNPACK), and a flag the user names
stands."""
import subprocess
import sys

from conftest import REPO
from research import xla_flags

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
    environ = {}
    xla_flags.apply(environ)
    assert environ == {'XLA_FLAGS': ours}
