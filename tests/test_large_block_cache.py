"""The large-block cache (``ops/large_block_cache.cc``), preloaded into a
process by ``runtime.process_environment``: a freed block's pages are kept
for the next allocation, and the allocator stays a correct malloc."""

import json
import os
import signal
import subprocess
import sys
import textwrap

from absl import logging
import pytest

from jax_resnet import runtime

pytestmark = pytest.mark.skipif(
    sys.platform != 'linux', reason='a glibc (Linux) preload library')

# Runs in a child process; prints one JSON line of findings.
_PROBE = textwrap.dedent(r'''
    import ctypes, json, os, random, resource, threading
    import numpy as np

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.realloc.restype = ctypes.c_void_p
    libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p),
                                    ctypes.c_size_t, ctypes.c_size_t]
    libc.malloc_usable_size.restype = ctypes.c_size_t
    libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
    MB = 1 << 20

    def touch(p, n, byte):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      ctypes.memset(p, byte, n)
      return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def holds(p, n, byte):
      return all(ctypes.string_at(p + off, 4096) == bytes([byte]) * 4096
                 for off in range(0, n - 4096, n // 64))

    out = {}
    p = libc.malloc(64 * MB)
    out['first_touch'] = touch(p, 64 * MB, 1)
    libc.free(p)
    q = libc.malloc(64 * MB)
    out['same_address'] = q == p
    out['second_touch'] = touch(q, 64 * MB, 2)
    out['usable'] = libc.malloc_usable_size(q) >= 64 * MB
    r = libc.realloc(q, 200 * MB)
    out['realloc_kept'] = holds(r, 64 * MB, 2)
    out['realloc_shrink_same'] = libc.realloc(r, 40 * MB) == r
    libc.free(r)
    small = libc.malloc(100)
    out['small_usable'] = libc.malloc_usable_size(small) >= 100
    libc.free(small)
    aligned = ctypes.c_void_p()
    out['memalign_rc'] = libc.posix_memalign(ctypes.byref(aligned), 1 << 16,
                                             40 * MB)
    out['memalign_aligned'] = aligned.value % (1 << 16) == 0
    libc.free(aligned)
    out['huge_fails'] = libc.malloc(ctypes.c_size_t(-1).value) is None

    # Live arrays of random large sizes, freed in random order and grown
    # with realloc (ndarray.resize), never overlap.
    rng = random.Random(0)
    live = {}
    for i in range(60):
      if live and rng.random() < 0.4:
        del live[rng.choice(sorted(live))]
      n = rng.randrange(33 * MB, 150 * MB)
      a = np.full(n, i % 251, np.uint8)
      if rng.random() < 0.2:
        a.resize(n + rng.randrange(MB, 80 * MB), refcheck=False)
        a[n:] = i % 251
      live[i] = a
    out['arrays_intact'] = all(
        int(a.min()) == int(a.max()) == i % 251 for i, a in live.items())
    live.clear()

    # Threads allocate and free at once (ctypes calls release the GIL).
    failures = []
    def churn(seed):
      g = random.Random(seed)
      for _ in range(100):
        n = g.randrange(32 * MB, 64 * MB)
        b = libc.malloc(n)
        ctypes.memset(b, seed, 4096)
        ctypes.memset(b + n - 4096, seed, 4096)
        if not (holds(b, 4096, seed) and holds(b + n - 4096, 4096, seed)):
          failures.append(seed)
        libc.free(b)
    threads = [threading.Thread(target=churn, args=(s,)) for s in (1, 2, 3)]
    for t in threads: t.start()
    for t in threads: t.join()
    out['threads_ok'] = not failures

    pid = os.fork()
    if pid == 0:
      b = libc.malloc(64 * MB)
      ctypes.memset(b, 7, 64 * MB)
      ok = holds(b, 64 * MB, 7)
      libc.free(b)
      os._exit(0 if ok else 1)
    out['fork_child_rc'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    pid = os.fork()
    if pid == 0:
      os.close(2)  # the message goes nowhere
      b = libc.malloc(64 * MB)
      libc.free(b)
      libc.free(b)
      os._exit(0)
    out['double_free_rc'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    out['preloaded'] = any('large_block_cache' in line
                           for line in open('/proc/self/maps'))
    print(json.dumps(out))
''')


def _probe(preload):
  env = {k: v for k, v in os.environ.items()
         if k not in ('LD_PRELOAD', 'GLIBC_TUNABLES')}
  if preload:
    env['LD_PRELOAD'] = preload
  proc = subprocess.run([sys.executable, '-c', _PROBE], env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_freed_block_keeps_its_pages_and_malloc_stays_correct():
  cached = _probe(runtime.large_block_cache())
  assert cached['preloaded']
  # The block comes back at the same address with its pages: touching it
  # again faults nothing in (glibc's fresh mapping faults in every page).
  assert cached['same_address']
  assert cached['second_touch'] <= 8, cached
  assert cached['first_touch'] >= 32, cached
  for check in ('usable', 'realloc_kept', 'realloc_shrink_same',
                'small_usable', 'memalign_aligned', 'huge_fails',
                'arrays_intact', 'threads_ok'):
    assert cached[check] is True, (check, cached)
  assert cached['memalign_rc'] == 0
  assert cached['fork_child_rc'] == 0
  # A double free aborts, as glibc's free does where it can tell.
  assert cached['double_free_rc'] == -signal.SIGABRT

  plain = _probe(None)
  assert not plain['preloaded']
  assert plain['second_touch'] >= 1000, plain
  assert plain['arrays_intact'] and plain['threads_ok']


def test_process_environment_preloads_the_cache_unless_the_user_chose():
  env = runtime.process_environment({})
  assert env['LD_PRELOAD'] == runtime.large_block_cache()
  assert os.path.exists(env['LD_PRELOAD'])
  assert env['GLIBC_TUNABLES'] == runtime.MALLOC_TUNABLE
  mine = runtime.process_environment({'LD_PRELOAD': '/opt/libjemalloc.so'})
  assert mine['LD_PRELOAD'] == '/opt/libjemalloc.so'


def test_a_failed_build_warns_and_preloads_nothing(monkeypatch, tmp_path):
  monkeypatch.setenv('JAX_RESNET_CACHE', str(tmp_path))
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  warnings = []
  monkeypatch.setattr(logging, 'warning',
                      lambda msg, *args: warnings.append(msg % args))
  env = runtime.process_environment({})
  assert 'LD_PRELOAD' not in env
  assert len(warnings) == 1 and 'no C++ compiler' in warnings[0]


def test_commands_restart_with_the_cache_preloaded():
  code = ('from jax_resnet import runtime; '
          'runtime.restart_with_process_settings(); '
          'import os; '
          'print(any("large_block_cache" in l for l in open("/proc/self/maps")),'
          ' os.environ["GLIBC_TUNABLES"])')
  env = {k: v for k, v in os.environ.items()
         if k not in ('LD_PRELOAD', 'GLIBC_TUNABLES', 'JAX_RESNET_NO_RESTART')}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = root
  proc = subprocess.run([sys.executable, '-c', code], env=env, cwd=root,
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ['True', runtime.MALLOC_TUNABLE]
