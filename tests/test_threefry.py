"""research/threefry.py: after `import research` jax.random's hash compiles unrolled on the CPU
within `threefry.unrolled()` (init programs) and as a while loop elsewhere, and every draw is the
same, bit for bit, as under jax's own lowering, in each form."""
import contextlib
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.extend.random import threefry_2x32

from conftest import REPO, import_research
from research import threefry

# Draws of every kind the experiments make (and flax's initialisers), eager and jitted, on raw
# and typed keys: name -> sha256 of the bytes. Run in subprocesses: under jax's own lowering
# (DEEPGEN_THREEFRY=rolled), ours as set by default (the loop, outside threefry.unrolled()) and
# ours unrolled (DEEPGEN_THREEFRY=unrolled: the rule threefry.unrolled() switches to).
DRAWS = '''
import hashlib, json
import research, jax, jax.numpy as jnp, flax.linen as nn
raw, typed = jax.random.PRNGKey(7), jax.random.key(7)
draws = {
    'uniform': lambda k: jax.random.uniform(k, (128, 500)),
    'uniform_range': lambda k: jax.random.uniform(k, (3, 5, 11), minval=-2.0, maxval=3.0),
    'normal': lambda k: jax.random.normal(k, (64, 100)),
    'bernoulli': lambda k: jax.random.bernoulli(k, jnp.linspace(0, 1, 784), (16, 784)),
    'randint': lambda k: jax.random.randint(k, (1000,), 0, 65),
    'split': lambda k: jax.random.key_data(jax.random.split(k, 5)),
    'fold_in': lambda k: jax.random.key_data(jax.random.fold_in(k, 12345)),
    'permutation': lambda k: jax.random.permutation(k, 5000),
    'truncated_normal': lambda k: jax.random.truncated_normal(k, -2.0, 2.0, (7, 9)),
    'dense_init': lambda k: nn.Dense(300).init(k, jnp.zeros((1, 784)))['params']['kernel'],
}
digest = lambda x: hashlib.sha256(jax.device_get(x).tobytes()).hexdigest()
out = {}
for name, draw in draws.items():
    for kind, key in (('raw', raw), ('typed', typed)):
        out[f'{name}/{kind}/eager'] = digest(draw(key))
        out[f'{name}/{kind}/jit'] = digest(jax.jit(draw)(key))
lowered = jax.jit(draws['normal']).lower(raw).compile().as_text()
print(json.dumps({'draws': out, 'while_loop': 'while' in lowered}))
'''


def start_draws(**env):
    return subprocess.Popen([sys.executable, '-c', DRAWS], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={'PATH': '/usr/bin:/bin', 'JAX_PLATFORMS': 'cpu', **env})


def draws(process):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.splitlines()[-1])


def test_every_draw_is_the_same_bits_as_under_jaxs_own_lowering():
    # the three at once: each is mostly importing and compiling, one core's work
    started = [start_draws(DEEPGEN_THREEFRY='rolled'), start_draws(),
               start_draws(DEEPGEN_THREEFRY='unrolled')]
    jaxs, looped, unrolled = [draws(p) for p in started]
    # each lowering did run: jax's and our loop have a while loop, our unrolled form has none
    assert jaxs['while_loop'] and looped['while_loop'] and not unrolled['while_loop']
    assert len(jaxs['draws']) == 40
    assert looped['draws'] == jaxs['draws']
    assert unrolled['draws'] == jaxs['draws']


def test_the_block_scopes_the_unrolled_form_to_what_is_lowered_within_it():
    key = jax.random.PRNGKey(0)
    hlo = lambda: jax.jit(lambda k: jax.random.uniform(k, (9,))).lower(key).compile().as_text()
    assert 'while' in hlo()
    with threefry.unrolled():
        assert 'while' not in hlo()
        with threefry.unrolled():  # nested: still unrolled, and after it too
            assert 'while' not in hlo()
        assert 'while' not in hlo()
    assert 'while' in hlo()
    with pytest.raises(RuntimeError), threefry.unrolled():
        raise RuntimeError  # an error inside leaves the block
    assert 'while' in hlo()


@pytest.mark.parametrize('key, ctr, expected', [
    # Random123's known answers for Threefry-2x32-20 (kat_vectors), as jax's own tests use them.
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6b200159, 0x99ba4efe)),
    ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff), (0x1cb996fc, 0xbb002be7)),
    ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0)),
])
def test_the_hash_gives_random123s_known_answers(key, ctr, expected):
    keypair, counts = tuple(jnp.uint32(k) for k in key), jnp.asarray(ctr, jnp.uint32)
    for block, loops in ((threefry.unrolled, False), (contextlib.nullcontext, True)):
        with block():
            hashed = jax.jit(lambda k, c: threefry_2x32(k, c)).lower(keypair, counts).compile()
        assert ('while' in hashed.as_text()) is loops
        assert tuple(int(x) for x in hashed(keypair, counts)) == expected


def test_the_setting_is_checked():
    assert threefry.choice({}) == 'init'
    assert threefry.choice({'DEEPGEN_THREEFRY': 'unrolled'}) == 'unrolled'
    assert threefry.apply({'DEEPGEN_THREEFRY': 'rolled'}) is False
    message = "DEEPGEN_THREEFRY must be 'init', 'unrolled' or 'rolled', got 'fast'"
    with pytest.raises(ValueError, match=message):
        threefry.choice({'DEEPGEN_THREEFRY': 'fast'})
    assert import_research(DEEPGEN_THREEFRY='fast') == (2, '', f'FATAL {message}\n')
