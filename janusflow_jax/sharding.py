"""Mesh construction, the one logical-axis rules table, and the activation-constraint helper.

Mesh axes are ("data", "fsdp", "tensor"). Every parameter names its logical axes when it is created;
`LOGICAL_RULES` maps each logical name to mesh axes (each name listed once).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Mapping, Sequence

import jax
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
    # The ShallowUViT generation encoder/decoder are sharded like the rest (conv_in/conv_out/mlp/embed).
    # The XLA miscompile of their convolutions and channel MLPs on meshes whose batch spans (data, fsdp)
    # with tensor > 1 is avoided by `data_parallel` (batch axes manual in the train step), not by
    # replicating these weights; tests/test_sharding.py checks both.
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


def _filter_axes(spec: P, keep) -> P:
    out = []
    for entry in spec:
        axes = tuple(a for a in ((entry,) if isinstance(entry, str) else tuple(entry or ())) if keep(a))
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def _drop_axes(spec: P, drop: Sequence[str]) -> P:
    """`spec` without the mesh axes `drop` (e.g. the manual axes inside a `shard_map`)."""
    return _filter_axes(spec, lambda a: a not in drop)


def _keep_axes(spec: P, keep: Sequence[str]) -> P:
    """`spec` with only the mesh axes `keep`."""
    return _filter_axes(spec, lambda a: a in keep)


def shard(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation to logical axes `names` when a multi-device mesh is active (inside
    `data_parallel`, the manual batch axes are left out: each shard already holds its own rows)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    spec = logical_to_spec(names)
    if mesh.manual_axes:
        spec = _drop_axes(spec, mesh.manual_axes)
    return jax.lax.with_sharding_constraint(x, spec)


BATCH_AXES = ("data", "fsdp")  # the mesh axes the batch rows are split over (LOGICAL_RULES "batch")


def _is_spec(x) -> bool:
    return isinstance(x, P)


def _gather(x: jax.Array, spec: P) -> jax.Array:
    """All-gather `x` along every dimension `spec` splits (over the manual axes named there)."""
    for dim, entry in enumerate(spec):
        if entry:
            x = jax.lax.all_gather(x, entry, axis=dim, tiled=True)
    return x


# The manual batch axes over which the scan bodies of stacked layers (nn/llama.py, nn/siglip.py) gather
# their layer's parameters, set by `data_parallel` while it traces `fn`; () = gathered up front.
_LAYERWISE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("layerwise_gather", default=())


def _stacked(names) -> bool:
    return bool(names) and names[0] == "layers"


def layerwise_leaves(graphdef: nnx.GraphDef, params: dict, mesh) -> dict | None:
    """Which leaves of the pure-dict `params` a scan body gathers one layer at a time (True): those
    stacked on a leading "layers" axis. None (gather everything up front) when one of them is split over
    the batch axes other than its logical rule says (a dimension `spec_for_shape` left replicated
    because the mesh does not divide it): a scan body knows a layer's split from its names alone."""
    if mesh.empty:
        return None
    _, st = nnx.split(nnx.merge(graphdef, params), nnx.Param)

    def one(v):
        names = v.get_metadata().get("out_sharding")
        if not _stacked(names):
            return False
        exact = _keep_axes(spec_for_shape(names, v.shape, mesh), BATCH_AXES) == _keep_axes(
            logical_to_spec(names), BATCH_AXES
        )
        return True if exact else None

    flags = jax.tree.map(one, st, is_leaf=lambda v: isinstance(v, nnx.Variable))
    pure = nnx.to_pure_dict(flags)
    leaves = jax.tree.leaves(pure, is_leaf=lambda x: x is None)
    return None if any(x is None for x in leaves) else pure


def gather_layer(state):
    """Inside a scan over stacked layers: this layer's parameters whole over the manual batch axes,
    when `data_parallel` left them split (one layer's all-gather at a time, its transpose a
    reduce-scatter of that layer's gradients) — otherwise `state` itself."""
    manual = _LAYERWISE.get()
    if not manual:
        return state

    def one(v):
        names = v.get_metadata().get("out_sharding") if isinstance(v, nnx.Variable) else None
        if not _stacked(names):
            return v
        return v.replace(_gather(v.get_value(), _keep_axes(logical_to_spec(names[1:]), manual)))

    return jax.tree.map(one, state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def data_parallel(
    fn: Callable[..., Any], param_specs: Sequence[Any], layerwise: Sequence[Any] | None = None
) -> Callable[..., Any]:
    """`fn(*params, *batches)` with the batch axes ("data", "fsdp") manual, its outputs summed over them.

    `fn` returns SUMS over the rows it is given (a pytree of scalars). The first `len(param_specs)`
    arguments are parameter pytrees with those PartitionSpecs: inside, each shard gathers its
    fsdp-split parameters (tiled all-gather; its transpose reduce-scatters the gradients, and the
    sum over `data` comes from the parameters being the same on every data shard). The remaining
    arguments are batch pytrees whose rows are split over ("data", "fsdp"). The `tensor` axis stays
    automatic.

    `layerwise` (one tree of bools per parameter tree, from `layerwise_leaves`): the leaves marked True
    are not gathered here but by their scan body (`gather_layer`), one layer at a time, so a step holds
    one layer's gathered weights and gradients instead of the whole model's (ZeRO-3; with remat the
    backward pass gathers each layer again). Everything else is gathered once per call.

    Why not leave the batch axes to XLA's partitioner: with the batch on ("data", "fsdp") and
    tensor > 1, XLA (jax 0.9 and 0.10, Shardy and GSPMD alike) computes wrong gradients for
    convolution-like ops (padding + slicing, e.g. the ConvNeXt depthwise conv) and wrong values
    elsewhere depending on the program; sharding constraints only move the error, and a manual
    `data` axis alone trips an XLA CHECK on {data:2, fsdp:2, tensor:2}. With both batch axes manual
    every mesh we test is exact (tests/test_sharding.py keeps a minimal reproduction of the bug).
    On a mesh whose batch axes are all 1 this is `fn` itself.
    """
    mesh = jax.sharding.get_abstract_mesh()
    manual = tuple(a for a in BATCH_AXES if not mesh.empty and mesh.shape.get(a, 1) > 1)
    if not manual:
        return fn
    n = len(param_specs)
    local = [jax.tree.map(lambda sp: _keep_axes(sp, manual), t, is_leaf=_is_spec) for t in param_specs]
    if layerwise is None:
        defer = [jax.tree.map(lambda _: False, t, is_leaf=_is_spec) for t in local]
    else:
        defer = list(layerwise)
    if len(defer) != n:
        raise ValueError(f"layerwise has {len(defer)} trees for {n} parameter trees")

    def inner(*args):
        params = [
            jax.tree.map(lambda sp, x, d: x if d else _gather(x, sp), t, a, f, is_leaf=_is_spec)
            for t, a, f in zip(local, args[:n], defer)
        ]
        token = _LAYERWISE.set(manual if layerwise is not None else ())
        try:
            out = fn(*params, *args[n:])
        finally:
            _LAYERWISE.reset(token)
        return jax.tree.map(lambda v: jax.lax.psum(v, manual), out)

    def call(*args):
        specs = tuple(local) + (P(manual),) * (len(args) - n)
        return jax.shard_map(inner, mesh=mesh, in_specs=specs, out_specs=P(), axis_names=set(manual))(*args)

    return call


def spec_for_shape(names: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
    """`logical_to_spec`, replicating any dimension its mesh axes do not divide evenly
    (e.g. the 3 RGB input channels of a patch conv on a 2-way fsdp axis)."""
    out = []
    for entry, dim in zip(logical_to_spec(names), shape):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        size = math.prod(mesh.shape[a] for a in axes)
        out.append(entry if axes and dim % size == 0 else None)
    return P(*out)


def state_specs(state, mesh) -> Any:
    """PartitionSpecs for an nnx.State whose Variables carry `out_sharding` logical names (`mesh` may
    be abstract, e.g. `jax.sharding.get_abstract_mesh()` inside a jitted function)."""

    def one(v):
        names = v.get_metadata().get("out_sharding") if isinstance(v, nnx.Variable) else None
        return spec_for_shape(names, v.shape, mesh) if names else P()

    return jax.tree.map(one, state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def param_specs(graphdef: nnx.GraphDef, params: dict, mesh) -> dict:
    """PartitionSpecs of the pure-dict `params`, from the logical names the graphdef's Params carry."""
    if mesh.empty:
        return jax.tree.map(lambda _: P(), params)
    _, st = nnx.split(nnx.merge(graphdef, params), nnx.Param)
    return nnx.to_pure_dict(state_specs(st, mesh))


def state_shardings(state, mesh: jax.sharding.Mesh):
    """NamedShardings for an nnx.State whose Variables carry `out_sharding` logical names."""
    return jax.tree.map(lambda sp: NamedSharding(mesh, sp), state_specs(state, mesh), is_leaf=_is_spec)
