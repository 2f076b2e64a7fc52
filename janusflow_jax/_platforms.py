"""Keep JAX from probing for a TPU on a machine that has no accelerator at all.

The test extra installs libtpu (compile-only TPU topologies for `janusflow_jax.plan`). With libtpu
installed and `JAX_PLATFORMS` unset, JAX tries to start a TPU whenever it creates its backends, and
on a machine without one it prints a screen of libtpu initialisation errors before falling back to
the CPU. Where no accelerator device file exists (TPU `/dev/accel*` or `/dev/vfio/N`, NVIDIA
`/dev/nvidiaN`, AMD `/dev/kfd`) the CPU is the certain outcome, so it is chosen up front. An explicit
`JAX_PLATFORMS` always wins; machines with an accelerator are left alone.
"""

from __future__ import annotations

import glob
import importlib.util
import os

ACCELERATOR_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def skip_absent_tpu() -> bool:
    """Set `JAX_PLATFORMS=cpu` when libtpu is installed, the variable is unset and no accelerator
    device file exists; returns whether it did. Call before JAX creates its backends."""
    if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
        return False
    if any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICE_FILES):
        return False
    os.environ["JAX_PLATFORMS"] = "cpu"
    return True
