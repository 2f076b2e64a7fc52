"""Mesh construction, the one logical-axis rules table, and the activation-constraint helper.

Mesh axes are ("data", "fsdp", "tensor"). Every parameter names its logical axes when it is created;
`LOGICAL_RULES` maps each logical name to mesh axes (each name listed once).
"""

from __future__ import annotations

import contextlib
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated)
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("cache_seq", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("height", None),
    ("width", None),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("norm", None),
)


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Build a ("data", "fsdp", "tensor") mesh; one axis may be -1 (fill with the remaining devices).

    `shape=None` gives a 1-device mesh (the default for single-device use and tests).
    """
    if devices is None:
        devices = jax.devices() if shape is not None else jax.devices()[:1]
    shape = dict(shape or {"data": 1, "fsdp": 1, "tensor": 1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    n = len(devices)
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    if -1 in sizes:
        rest = math.prod(s for s in sizes if s != -1)
        if n % rest:
            raise ValueError(f"{n} devices cannot fill mesh {dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = n // rest
    if math.prod(sizes) != n:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {n}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=list(devices))


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh | None = None):
    """Context in which modules are created (eager variable sharding needs a mesh) and run."""
    mesh = mesh if mesh is not None else make_mesh()
    with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
        yield mesh


def logical_to_spec(names: Sequence[str | None]) -> P:
    """PartitionSpec for logical axis names. A mesh axis shards at most one dimension: when an
    earlier dimension already uses it (an activation [batch, seq, embed] puts "fsdp" in the batch
    entry), later dimensions drop it, as MaxText's first-match rule resolution does."""
    rules = dict(LOGICAL_RULES)
    out, used = [], set()
    for n in names:
        if n is not None and n not in rules:
            raise KeyError(f"logical axis {n!r} is not in LOGICAL_RULES")
        entry = rules.get(n) if n is not None else None
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        free = tuple(a for a in axes if a not in used)
        used.update(free)
        out.append(None if not free else free[0] if len(free) == 1 and isinstance(entry, str) else free)
    return P(*out)


def shard(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation to logical axes `names` when a multi-device mesh is active."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def spec_for_shape(names: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
    """`logical_to_spec`, replicating any dimension its mesh axes do not divide evenly
    (e.g. the 3 RGB input channels of a patch conv on a 2-way fsdp axis)."""
    out = []
    for entry, dim in zip(logical_to_spec(names), shape):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        size = math.prod(mesh.shape[a] for a in axes)
        out.append(entry if axes and dim % size == 0 else None)
    return P(*out)


def state_shardings(state, mesh: jax.sharding.Mesh):
    """NamedShardings for an nnx.State whose Variables carry `out_sharding` logical names."""

    def one(v):
        names = v.get_metadata().get("out_sharding") if isinstance(v, nnx.Variable) else None
        spec = spec_for_shape(names, v.shape, mesh) if names else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_array(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))
