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

x = jnp.ones((4096, 4096), jnp.float32)  # 64 MiB; exp(x).T is a 64 MiB scratch buffer
f = jax.jit(lambda x: (jnp.exp(x).T + x).sum(0)[:3])
f(x).block_until_ready()
per_call = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# the median call: until the heap has grown to the most scratch buffers ever alive at once (the
# previous call's is freed asynchronously), an occasional call still takes fresh pages
faults = sorted(per_call)[len(per_call) // 2]
print(json.dumps(dict(applied=host_memory.applied, reason=host_memory.reason, faults=faults,
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
    # The scratch buffer stays mapped: the median call faults in well under a quarter of it.
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
