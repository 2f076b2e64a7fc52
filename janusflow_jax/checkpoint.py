"""Params-only Orbax checkpoints of a converted JanusFlow (+ its VAE), written atomically.

Layout of a checkpoint folder:
  params/          Orbax StandardCheckpointer tree {"janusflow": {...}, "vae": {...}}
  metadata.json    format tag, converter version, official config, VAE config, dtype, source SHA-256s
  tokenizer / processor files copied from the source folder (when present)

The folder is assembled under a temporary name beside the destination and renamed into place
only when complete, so an interrupted or failed write leaves no destination folder.

Memory (real sizes on one host): `save_streamed` writes a tree whose values arrive piece by piece
(the converter hands over one converted tensor at a time: a whole leaf or one layer of a stacked
leaf), so a conversion holds one tensor plus a bounded write queue, never the tree. Its arrays are
ordinary Orbax arrays (same tree metadata, value type `np.ndarray`); only the chunking differs:
stacked leaves are stored one layer per zarr shard (so each layer is written once, whole), and
every array's read chunks are small (~`READ_CHUNK_BYTES`), so that a device shard is read without
decoding its neighbours. `restore_params(path, target)` with a sharded target restores one device
shard at a time straight into its device buffer (host staging: one shard), never the whole tree
on the host plus its device copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from typing import Any, Callable

import numpy as np

FORMAT = "janusflow-jax/params-v1"
METADATA = "metadata.json"
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "preprocessor_config.json",
)


class CheckpointError(ValueError):
    pass


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_checkpoint(path: str) -> bool:
    meta = os.path.join(path, METADATA)
    if not os.path.isfile(meta):
        return False
    try:
        with open(meta) as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def _stringify(tree):
    if isinstance(tree, dict):
        return {str(k): _stringify(v) for k, v in tree.items()}
    return tree


def _destringify(tree):
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _destringify(v) for k, v in tree.items()}
    return tree


@contextlib.contextmanager
def atomic_dir(dest: str, *, overwrite: bool = False):
    """Yield a temporary folder that becomes `dest` only if the block finishes without error."""
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and not overwrite:
        raise CheckpointError(f"{dest} already exists (pass --overwrite to replace it)")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.partial-", dir=parent)
    try:
        yield tmp
        if os.path.exists(dest):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=parent)
            os.rename(dest, os.path.join(old, "x"))
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_params(
    dest: str,
    params: dict[str, Any],
    metadata: dict[str, Any],
    *,
    extra_files: dict[str, str] | None = None,
    overwrite: bool = False,
) -> str:
    """Write `params` (nested dict of host arrays, whole) + metadata (+ files to copy) atomically to `dest`.

    In a multi-process run every process calls it with the same (gathered) tree: process 0 writes, the
    others wait at a barrier until the folder is complete, so no process reads or moves on early."""
    import jax

    multi = jax.process_count() > 1
    if not multi or jax.process_index() == 0:
        with atomic_dir(dest, overwrite=overwrite) as tmp:
            _orbax_save(os.path.join(tmp, "params"), _stringify(params), only_this_process=multi)
            for name, src in (extra_files or {}).items():
                shutil.copyfile(src, os.path.join(tmp, name))
            meta = dict(metadata, format=FORMAT)
            with open(os.path.join(tmp, METADATA), "w") as f:
                json.dump(meta, f, indent=2, sort_keys=True)
    if multi:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"janusflow-jax save_params {os.path.abspath(dest)}")
    return dest


def read_metadata(path: str) -> dict[str, Any]:
    meta = os.path.join(path, METADATA)
    if not os.path.isfile(meta):
        raise CheckpointError(f"{path}: not a janusflow-jax checkpoint (no {METADATA})")
    try:
        with open(meta) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta}: invalid JSON ({e})") from None
    if d.get("format") != FORMAT:
        raise CheckpointError(f"{meta}: unknown format {d.get('format')!r} (expected {FORMAT})")
    return d


def restore_params(path: str, target: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restore the params tree; `target` (ShapeDtypeStructs, optionally sharded, possibly another
    dtype) places and casts the arrays as they are read. With a sharded target every device shard
    is read on its own and put on its device before the next is read (see the module docstring)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)  # Orbax refuses relative paths
    read_metadata(path)
    params = os.path.join(path, "params")
    if target is not None and all(getattr(a, "sharding", None) is not None for a in dict_leaves(target)):
        return _destringify(_restore_sharded(params, _stringify(target)))
    ckptr = ocp.StandardCheckpointer()
    try:
        if target is not None:
            tree = ckptr.restore(params, _stringify(target))
        else:
            tree = ckptr.restore(params)
    finally:
        ckptr.close()
    return _destringify(tree)


# --- streaming save ----------------------------------------------------------------------------

WRITE_QUEUE_BYTES = 256 << 20  # at most this many converted bytes wait for tensorstore at a time
READ_CHUNK_BYTES = 4 << 20  # target size of a stored read chunk (a zarr3 sub-chunk)


class StreamError(RuntimeError):
    """A streamed leaf was written incompletely or twice (a bug of the producer, not of the input)."""


class Pending:
    """A leaf of `save_streamed`: its shape and dtype now, its values later, piece by piece.
    `layered`: the values arrive one `[i]` slice of axis 0 at a time (a stacked leaf); stored one
    slice per zarr shard so that each is written once, whole."""

    def __init__(self, shape, dtype, *, layered: bool = False):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.layered = bool(layered) and len(self.shape) >= 1
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.nbytes = self.size * self.dtype.itemsize
        self.key: tuple = ()  # the path in the tree; set by save_streamed
        self.stream: _Stream | None = None

    def __repr__(self) -> str:
        return f"Pending({self.shape}, {self.dtype}{', layered' if self.layered else ''})"


def save_streamed(
    dest: str,
    layout: dict[str, Any],
    fill: Callable[[Callable[[tuple, tuple, np.ndarray], None]], None],
    metadata: dict[str, Any],
    *,
    extra_files: dict[str, str] | None = None,
    overwrite: bool = False,
    queue_bytes: int | None = None,
) -> str:
    """Like `save_params`, for a tree (`layout`: nested dict of `Pending`) whose values are produced
    by `fill(write)` while the arrays are open: `write(path, index, value)` stores `value` at
    `leaf[index]` of the leaf at key path `path` (`()` the whole leaf; `(i,)` slice i of a layered
    leaf; `(i?, :, …, j)` a part, gathered in memory until its whole unit — the leaf or slice i — is
    complete). Every element must be written exactly once. Peak memory: the value being written,
    incomplete units, and at most `queue_bytes` (default: 1/32 of the tree, 8-256 MiB) waiting."""
    total = sum(p.nbytes for p in dict_leaves(layout))
    stream = _Stream(fill, queue_bytes or int(min(WRITE_QUEUE_BYTES, max(8 << 20, total // 32))))
    tree = _stringify(layout)
    for key, p in _flat_items(tree):
        if not isinstance(p, Pending):
            raise TypeError(f"save_streamed: leaf {'.'.join(key)} is {type(p).__name__}, not Pending")
        p.key, p.stream = key, stream
        stream.leaves[key] = p
    with atomic_dir(dest, overwrite=overwrite) as tmp:
        try:
            _orbax_save(os.path.join(tmp, "params"), tree)
        except BaseException:
            if stream.error is not None:  # the producer's own error, not Orbax's wrapping of it
                raise stream.error from None
            raise
        if stream.error is not None:
            raise stream.error
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, os.path.join(tmp, name))
        with open(os.path.join(tmp, METADATA), "w") as f:
            json.dump(dict(metadata, format=FORMAT), f, indent=2, sort_keys=True)
    return dest


class _Stream:
    """The producer of a streamed tree and the write queue between it and tensorstore."""

    def __init__(self, fill, queue_bytes: int):
        self.fill, self.queue_bytes = fill, queue_bytes
        self.leaves: dict[tuple, Pending] = {}
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def run(self, arrays: dict[tuple, Any]) -> None:
        """Call the producer; every write goes to `arrays[key]` (open tensorstores)."""
        import collections

        queue: collections.deque = collections.deque()
        waiting = 0
        units: dict[tuple, list] = {}  # (key, unit index) -> [buffer, elements still missing]
        written = {k: 0 for k in self.leaves}

        def submit(key, unit, value):
            nonlocal waiting
            fut = arrays[key][unit].write(value, can_reference_source_data_indefinitely=True)
            queue.append((fut, value.nbytes))
            waiting += value.nbytes
            written[key] += value.size
            while waiting > self.queue_bytes and queue:
                f, n = queue.popleft()
                f.result()
                waiting -= n

        def write(path, index, value):
            key = tuple(str(k) for k in path)
            leaf = self.leaves[key]
            value = np.asarray(value)
            if value.dtype != leaf.dtype:
                value = value.astype(leaf.dtype)
            index = tuple(index)
            if leaf.layered and not (index and isinstance(index[0], (int, np.integer))):
                raise StreamError(f"{'.'.join(key)}: layered leaf written at {index} (not one slice)")
            unit = tuple(int(i) for i in index[:1]) if leaf.layered else ()
            unit_shape = leaf.shape[len(unit) :]
            if len(index) == len(unit):
                if value.shape != unit_shape:
                    raise StreamError(f"{'.'.join(key)}{list(unit)}: value {value.shape}, expected {unit_shape}")
                submit(key, unit, value)
                return
            slot = units.get((key, unit))
            if slot is None:
                slot = units[(key, unit)] = [np.empty(unit_shape, leaf.dtype), int(np.prod(unit_shape))]
            slot[0][index[len(unit) :]] = value
            slot[1] -= value.size
            if slot[1] <= 0:
                del units[(key, unit)]
                submit(key, unit, slot[0])

        try:
            self.fill(write)
            while queue:
                queue.popleft()[0].result()
            short = [".".join(k) for k, p in self.leaves.items() if written[k] != p.size]
            if units or short:
                raise StreamError(f"streamed leaves not written exactly once: {sorted(set(short))[:10]}")
        except BaseException as e:
            self.error = e
            raise


def _chunk_shapes(p: Pending) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(zarr shard shape, read chunk shape) of a streamed leaf."""
    from orbax.checkpoint._src.arrays import subchunking

    shape = tuple(max(1, d) for d in p.shape)
    if p.layered:
        rest = shape[1:]
        inner = subchunking.choose_chunk_shape(rest, rest, p.dtype, READ_CHUNK_BYTES) if rest else ()
        return (1,) + rest, (1,) + tuple(inner)
    outer = subchunking.choose_chunk_shape(shape, shape, p.dtype, 2**31 - 1)
    return tuple(outer), tuple(subchunking.choose_chunk_shape(outer, outer, p.dtype, READ_CHUNK_BYTES))


def _host_handler():
    """Orbax's numpy handler (no defensive deep copy: the caller waits for the save), which also
    writes `Pending` leaves: it opens their arrays with the spec Orbax builds for a numpy array of
    that shape, re-chunked (`_chunk_shapes`), and runs their producer against them."""
    import asyncio

    import orbax.checkpoint as ocp
    import tensorstore as ts
    from orbax.checkpoint import future
    from orbax.checkpoint._src.serialization import ocdbt_utils
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    class HostHandler(ocp.type_handlers.NumpyHandler):
        def __init__(self):
            super().__init__(deepcopy_host_arrays=False)

        async def serialize(self, values, infos, args=None):
            args = list(args or [ocp.type_handlers.SaveArgs()] * len(values))
            eager = [i for i, v in enumerate(values) if not isinstance(v, Pending)]
            lazy = [i for i, v in enumerate(values) if isinstance(v, Pending)]
            out = []
            if eager:
                out += await super().serialize(
                    [values[i] for i in eager], [infos[i] for i in eager], [args[i] for i in eager]
                )
            if lazy:
                out.append(
                    future.CommitFutureAwaitingContractedSignals(
                        self._stream([values[i] for i in lazy], [infos[i] for i in lazy], [args[i] for i in lazy]),
                        name="janusflow_stream",
                    )
                )
            return out

        async def _stream(self, values, infos, args):
            arrays = {}
            for v, info, arg in zip(values, infos, args):
                await info.await_path_creation()
                spec = ts_utils.build_array_write_spec(
                    info=info,
                    arg=arg,
                    global_shape=v.shape,
                    local_shape=v.shape,
                    dtype=v.dtype,
                    use_ocdbt=info.is_ocdbt_checkpoint,
                    process_index=ocdbt_utils.get_process_index_for_subdir(use_ocdbt=info.is_ocdbt_checkpoint),
                    metadata_key=self._metadata_key,
                ).json
                outer, inner = _chunk_shapes(v)
                meta = spec["metadata"]
                if "chunks" in meta:  # zarr v2 (Orbax's default): one chunk shape, the small one
                    meta["chunks"] = list(inner)
                else:  # zarr v3: a shard per slice (or leaf), small read chunks inside
                    meta["chunk_grid"]["configuration"]["chunk_shape"] = list(outer)
                    meta["codecs"][0]["configuration"]["chunk_shape"] = list(inner)
                arrays[v.key] = await ts.open(ts.Spec(spec), create=True, open=True, context=info.ts_context)
            for stream in {id(v.stream): v.stream for v in values}.values():
                await asyncio.to_thread(stream.run, {k: a for k, a in arrays.items() if k in stream.leaves})

    handler = HostHandler()
    reg = ocp.type_handlers.create_type_handler_registry(
        *[(t, h) for t, h in _default_handlers() if t is not np.ndarray]
    )
    reg.add(np.ndarray, handler, func=lambda t: issubclass(t, (np.ndarray, Pending)))
    return reg


def _default_handlers():
    from orbax.checkpoint._src.serialization import type_handler_registry

    return type_handler_registry._DEFAULT_TYPE_HANDLERS  # noqa: SLF001 -- the stock (type, handler) pairs


def _orbax_save(directory: str, tree: dict, *, only_this_process: bool = False) -> None:
    """A blocking params-only Orbax save (the layout `StandardCheckpointer` reads) through `_host_handler`.
    `only_this_process`: in a multi-process run, this process writes alone (Orbax's barriers over it only)."""
    import jax
    import orbax.checkpoint as ocp

    mp = ocp.options.MultiprocessingOptions()
    if only_this_process:
        me = jax.process_index()
        mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=_host_handler(), multiprocessing_options=mp)
    ckptr = ocp.Checkpointer(handler, multiprocessing_options=mp)
    try:
        ckptr.save(directory, args=ocp.args.PyTreeSave(tree))
    finally:
        ckptr.close()


# --- sharded restore, one device shard at a time ------------------------------------------------


def _restore_sharded(params: str, target: dict) -> dict:
    import jax
    import tensorstore as ts
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    meta_path = os.path.join(params, "_METADATA")
    try:
        with open(meta_path) as f:
            doc = json.load(f)
        stored = {tuple(k["key"] for k in v["key_metadata"]) for v in doc["tree_metadata"].values()}
        driver = "zarr3" if doc.get("use_zarr3") else "zarr"
        ocdbt = bool(doc.get("use_ocdbt", True))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{params}: unreadable Orbax tree metadata ({e})") from None
    flat = dict(_flat_items(target))
    missing = sorted(".".join(k) for k in flat if k not in stored)
    if missing:
        raise CheckpointError(f"{params}: no stored array for {', '.join(missing[:10])}")
    ctx = ts.Context(  # no chunk cache (each chunk is read once); a small one for the OCDBT index
        {"file_io_concurrency": {"limit": 4}, "data_copy_concurrency": {"limit": 2}, "cache_pool": {"total_bytes_limit": 0},
         "cache_pool#ocdbt": {"total_bytes_limit": 8 << 20}}
    )  # fmt: skip
    out = {}
    untrimmed = 0  # bytes read since the last `_trim`
    for key, sds in flat.items():
        name = ".".join(key)
        spec = {"driver": driver, "kvstore": ts_utils.build_kvstore_tspec(params, name=name, use_ocdbt=ocdbt)}
        t = ts.open(spec, open=True, read=True, context=ctx).result()
        if tuple(t.shape) != tuple(sds.shape):
            raise CheckpointError(f"{params}: {name} is stored as {tuple(t.shape)}, expected {tuple(sds.shape)}")
        want = np.dtype(sds.dtype)
        by_index: dict[tuple, list] = {}
        for device, index in sds.sharding.addressable_devices_indices_map(sds.shape).items():
            by_index.setdefault(_hashable(index, sds.shape), []).append(device)
        shards = []
        for index, devices in by_index.items():
            host = t[tuple(slice(a, b) for a, b in index)].read().result()
            if host.dtype != want:
                host = host.astype(want)
            shards += [jax.device_put(host, d) for d in devices]
            for s_ in shards[-len(devices) :]:
                s_.block_until_ready()
            del host
        out[key] = jax.make_array_from_single_device_arrays(sds.shape, sds.sharding, shards)
        untrimmed += math.prod(sds.shape) * want.itemsize
        if untrimmed >= _TRIM_EVERY:
            _trim()
            untrimmed = 0
    _trim()
    return _unflat(out)


# `malloc_trim` walks the whole heap (~20 ms a call in a process that has compiled a few programs):
# once per this many bytes read, and at the end, instead of after every array.
_TRIM_EVERY = 64 << 20


def _trim() -> None:
    """Hand freed heap memory back to the system (glibc keeps the staging buffers and tensorstore's
    decode buffers, freed on its worker threads' arenas, mapped: ~25% of a model's bytes otherwise)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _hashable(index, shape) -> tuple:
    return tuple((s.indices(n)[0], s.indices(n)[1]) for s, n in zip(index, shape))


def _flat_items(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat_items(v, prefix + (k,))
    else:
        yield prefix, tree


def _unflat(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        d = out
        for k in key[:-1]:
            d = d.setdefault(k, {})
        d[key[-1]] = v
    return out


def dict_leaves(tree):
    """The leaves of a nested dict, in insertion order (anything that is not a dict is a leaf)."""
    if isinstance(tree, dict):
        for v in tree.values():
            yield from dict_leaves(v)
    else:
        yield tree
