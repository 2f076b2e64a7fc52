"""Keep XLA:CPU's per-call scratch memory mapped between calls (Linux, glibc).

XLA:CPU allocates the scratch buffer of every execution with `posix_memalign` on one of its worker
threads. glibc gives such a thread its own arena, and serves a request larger than that arena's heap
(64 MiB) or than the mmap threshold (at most 32 MiB) with a fresh `mmap`, unmapped again on `free`:
every call page-faults its whole scratch buffer back in. For the `bench` understanding call (816-token
prompt, 32 new tokens) that is a 104 MB buffer, ~25,000 faults and ~45 ms of kernel time per call,
~13 ms of its wall time on a 2-core CPU (0.162 s without the settings below, 0.149 s with them).

`keep_host_memory()` tells glibc to serve every thread from the main arena, never to `mmap` a
request, and to return freed memory to the system only above 1 GiB of free heap top: once the heap
has grown to fit, the scratch buffer is reused already mapped (the bench understanding call: 0 faults).
Growing takes a few calls, not one: XLA frees a call's scratch asynchronously, often after the next call
has allocated its own, and a 64-byte-aligned request does not always fit a freed chunk of its own size
(measured on a 64 MiB buffer: 0-7 calls in 40 took a fresh one, mostly among the first ten).

It is a trade, so it is opt-in: with one arena, XLA's multi-threaded compiler and multi-device CPU
runs contend for the malloc lock (measured: first-call compile of that understanding program ~1 s
slower, the 8-simulated-device sharding tests ~20% slower), and memory freed by the process stays
mapped. It pays for a long-running CPU process that makes many calls (a server, a benchmark). Turn it
on with `JANUSFLOW_KEEP_HOST_MEMORY=1` (applied when `janusflow_jax` is imported) or by calling
`keep_host_memory()` before JAX runs anything. It acts only where it can and should:
  * Linux with glibc;
  * before JAX has created its backends (afterwards XLA's threads already own their arenas, and the
    setting would not reach them);
  * when JAX will run on the CPU (no accelerator plugin installed, or `JAX_PLATFORMS` starting with
    `cpu`): with an accelerator the scratch lives in device memory.
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
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        reason = "not Linux/glibc"
    elif _jax_backends_initialized():
        reason = "JAX backends already exist (it must run before JAX runs anything)"
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


def from_environment() -> bool:
    """`keep_host_memory()` if `JANUSFLOW_KEEP_HOST_MEMORY=1` (called when janusflow_jax is imported)."""
    global reason
    if os.environ.get(ENV, "0") == "1":
        return keep_host_memory()
    if applied is None:
        reason = f"off ({ENV} is not 1)"
    return False
