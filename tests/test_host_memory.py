"""research/host_memory.py: after `import research` a freed 64 MiB block is reused without
page faults (glibc otherwise unmaps it and the next one is faulted in page by page); in another
thread (as XLA's) a 96 MiB block only with one arena (glibc caps other threads' heaps at 64 MiB
and mmaps a larger block every time); a user's own malloc settings stand, and a bad
DEEPGEN_MALLOC stops every command with one line."""
import subprocess
import sys

import pytest

from conftest import REPO, import_research
from research import host_memory

# Minor page faults of writing a fresh block of SIZE bytes, after one was written and freed,
# in the main thread or (THREAD) in another.
PROBE = '''
import ctypes, resource, sys, threading
import research
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_void_p,)
size, thread = int(sys.argv[1]), sys.argv[2] == 'thread'
def faults():  # as XLA:CPU's temporaries: malloc, written, freed (numpy asks for huge pages)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
def second():
    faults()
    print(faults())
if thread:
    worker = threading.Thread(target=second)
    worker.start()
    worker.join()
else:
    second()
'''


def second_block_faults(size, where, **env):
    environ = {'PATH': '/usr/bin:/bin', **env}
    done = subprocess.run([sys.executable, '-c', PROBE, str(size), where], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=environ)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout)


@pytest.mark.skipif(host_memory._glibc_mallopt() is None, reason='glibc malloc only')
@pytest.mark.parametrize('size_mib, where, untuned, tuned', [
    (64, 'main', 'default', 'keep'),
    (96, 'thread', 'keep', 'one-arena')])
def test_a_freed_block_is_reused_without_page_faults(size_mib, where, untuned, tuned):
    size = size_mib << 20
    pages = size // 4096
    # measured: every 4 KiB page faulted in again (16,385 and 24,577)
    assert second_block_faults(size, where, DEEPGEN_MALLOC=untuned) > pages // 2
    assert second_block_faults(size, where, DEEPGEN_MALLOC=tuned) < pages // 20  # measured: 0


def test_the_users_own_malloc_settings_stand():
    assert host_memory.wanted({})
    assert not host_memory.wanted({'DEEPGEN_MALLOC': 'default'})
    assert not host_memory.wanted({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'})
    assert not host_memory.wanted({'MALLOC_ARENA_MAX': '2'})
    assert host_memory.apply({'DEEPGEN_MALLOC': 'default'}) is False
    assert host_memory.one_arena({'DEEPGEN_MALLOC': 'default'}) is False
    assert host_memory.one_arena({'MALLOC_ARENA_MAX': '2'}) is False
    assert host_memory.one_arena({'DEEPGEN_MALLOC': 'keep'}) is False


def test_a_bad_setting_is_one_fatal_line():
    message = "DEEPGEN_MALLOC must be 'keep', 'one-arena' or 'default', got 'one_arena'"
    with pytest.raises(ValueError, match=message):
        host_memory.choice({'DEEPGEN_MALLOC': 'one_arena'})
    assert import_research(DEEPGEN_MALLOC='one_arena') == (2, '', f'FATAL {message}\n')
