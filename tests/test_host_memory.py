"""`JANUSFLOW_KEEP_HOST_MEMORY=1` makes XLA:CPU reuse its scratch memory between calls (see
host_memory): measured in fresh processes by the page faults of a call whose scratch buffer is 64 MiB."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

PROBE = r"""
import json, resource, sys
if sys.argv[1] == "jax-first":
    import jax
    jax.devices()
import janusflow_jax
from janusflow_jax import host_memory
import jax, jax.numpy as jnp

if sys.argv[1] == "jax-first":  # only whether the settings were applied
    print(json.dumps(dict(applied=host_memory.applied, reason=host_memory.reason)))
    sys.exit(0)
x = jnp.ones((4096, 4096), jnp.float32)  # 64 MiB; exp(x).T is a 64 MiB scratch buffer
f = jax.jit(lambda x: (jnp.exp(x).T + x).sum(0)[:3])
# Faults of the whole process (RUSAGE_SELF): XLA allocates, touches and frees the scratch on its
# worker threads, so the calling thread's own count (RUSAGE_THREAD) is 0 with or without the opt-in.
# With the opt-in a call still takes a fresh buffer (a full buffer of faults) while the heap settles:
# XLA frees a call's scratch asynchronously, often after the next call has allocated its own, and a
# freed chunk whose neighbours were reused cannot serve the next 64-byte-aligned request of the same
# size, until enough holes have coalesced. Measured: 0-7 such calls in 40 (most in the first ten,
# some as late as the 35th), then none in hundreds of calls. So: a few warm-up calls, then the
# median of many calls, which needs a fresh buffer in half of them to fail.
for _ in range(5):
    f(x).block_until_ready()
per_call = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(per_call)[len(per_call) // 2]
print(json.dumps(dict(applied=host_memory.applied, reason=host_memory.reason, faults=faults, per_call=per_call,
                      scratch_pages=64 * 2**20 // resource.getpagesize())))
"""


def _probe(mode: str, **env):
    e = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    e.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=e, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings are Linux-only")
def test_opt_in_makes_scratch_memory_reused():
    r = _probe("plain", JANUSFLOW_KEEP_HOST_MEMORY="1")
    assert r["applied"] is True, r["reason"]
    # The scratch buffer stays mapped: the median of 30 calls faults in well under a quarter of it.
    assert r["faults"] < 0.25 * r["scratch_pages"], r
    # By default glibc unmaps it after every call and all of it faults in again (measured 32.8k
    # faults per call on 4 KiB pages; with transparent huge pages always on, far fewer).
    off = _probe("plain")
    assert off["applied"] is None and "off" in off["reason"]
    thp = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (thp.exists() and "[always]" in thp.read_text()):
        assert off["faults"] > r["scratch_pages"], off


def test_too_late_leaves_malloc_alone():
    late = _probe("jax-first", JANUSFLOW_KEEP_HOST_MEMORY="1")
    assert late["applied"] is False and "already exist" in late["reason"]
