"""research/host_memory.py: after `import research` a freed 64 MiB block is reused without
page faults (glibc otherwise unmaps it and the next one is faulted in page by page), and a
user's own malloc settings stand."""
import subprocess
import sys

import pytest

from conftest import REPO
from research import host_memory

# Minor page faults of writing a fresh 64 MiB array, after one was written and freed.
PROBE = '''
import ctypes, resource
import research
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_void_p,)
def faults():  # as XLA:CPU's temporaries: malloc, written, freed (numpy asks for huge pages)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(faults())
'''


def second_block_faults(**env):
    environ = {'PATH': '/usr/bin:/bin', **env}
    done = subprocess.run([sys.executable, '-c', PROBE], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=environ)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout)


@pytest.mark.skipif(host_memory._glibc_mallopt() is None, reason='glibc malloc only')
def test_a_freed_block_is_reused_without_page_faults():
    pages = (64 << 20) // 4096
    untuned = second_block_faults(DEEPGEN_MALLOC='default')  # glibc's mmap per block
    assert untuned > pages // 2, untuned  # measured: 16,385 (every 4 KiB page faulted in)
    assert second_block_faults() < pages // 20  # measured: 0


def test_the_users_own_malloc_settings_stand():
    assert host_memory.wanted({})
    assert not host_memory.wanted({'DEEPGEN_MALLOC': 'default'})
    assert not host_memory.wanted({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'})
    assert not host_memory.wanted({'MALLOC_ARENA_MAX': '2'})
    assert host_memory.apply({'DEEPGEN_MALLOC': 'default'}) is False
