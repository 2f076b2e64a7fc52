"""Keep XLA:CPU's per-call scratch memory mapped between calls (Linux, glibc).

XLA:CPU allocates the scratch buffer of every execution with `posix_memalign` on one of its worker
threads. glibc gives such a thread its own arena, and serves a request larger than that arena's heap
(64 MiB) or than the mmap threshold (at most 32 MiB) with a fresh `mmap`, unmapped again on `free`:
every call page-faults its whole scratch buffer back in. For the `bench` understanding call (816-token
prompt, 32 new tokens) that is a 104 MB buffer, ~25,000 faults and ~45 ms of kernel time per call,
~20 ms of its ~165 ms wall time on a 2-core CPU.

`keep_host_memory()` tells glibc to serve every thread from the main arena, never to `mmap` a
request, and to return freed memory to the system only above 1 GiB of free heap top: after the first
call the scratch buffer is reused already mapped. It is called when `janusflow_jax` is imported, and
acts only where it can and should:
  * Linux with glibc, and `JANUSFLOW_KEEP_HOST_MEMORY` not set to `0`;
  * before JAX has created its backends (afterwards XLA's threads already own their arenas, and the
    setting would not reach them: import janusflow_jax before running JAX computations);
  * when JAX will run on the CPU (no accelerator plugin installed, or `JAX_PLATFORMS` starting with
    `cpu`): with an accelerator the scratch lives in device memory.
The cost is the usual one of a retained heap: memory freed by the process stays mapped (up to 1 GiB at
the top of the heap) instead of going back to the system.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import sys

ENV = "JANUSFLOW_KEEP_HOST_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
_ACCELERATOR_DISTRIBUTIONS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")

applied: bool | None = None  # None: not tried; else whether the settings took effect
reason: str = "not tried"


def _jax_backends_initialized() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without that query: assume the worst
        return True


def _cpu_backend_expected() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    names = (d.metadata.get("Name", "").lower() for d in importlib.metadata.distributions())
    return not any(n.startswith(_ACCELERATOR_DISTRIBUTIONS) for n in names)


def keep_host_memory() -> bool:
    """Apply the malloc settings above if they can take effect; returns whether they did (see `reason`)."""
    global applied, reason
    if applied is not None:
        return applied
    applied = False
    if os.environ.get(ENV, "1") == "0":
        reason = f"{ENV}=0"
    elif sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        reason = "not Linux/glibc"
    elif _jax_backends_initialized():
        reason = "JAX backends were created before janusflow_jax was imported"
    elif not _cpu_backend_expected():
        reason = "an accelerator backend is expected"
    else:
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):
            reason = "mallopt unavailable"
            return applied
        ok = mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        applied = bool(ok)
        reason = "applied" if applied else "mallopt refused a setting"
    return applied
