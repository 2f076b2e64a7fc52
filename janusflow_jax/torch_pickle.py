"""A torch-free, execution-free reader for `torch.save` state dicts (the zip format, torch >= 1.6).

Janus-Pro-1B/-7B are published only as `pytorch_model*.bin`. Those files are zip archives:
`<archive>/data.pkl` (a pickle describing the state dict), `<archive>/data/<key>` (one member of raw
little-endian bytes per storage), `<archive>/byteorder`, `<archive>/version`, ... The archive folder
name varies (it is the saved file's stem, or "archive"); it is found from the `data.pkl` member.

`data.pkl` is read with the semantics of torch's `weights_only=True`, stricter: a `pickle.Unpickler`
whose `find_class` resolves ONLY the globals a plain state dict needs (`ALLOWED_GLOBALS`) to inert
local stand-ins, never importing torch or anything the file names; every other global — `os.system`,
`builtins.eval`, `subprocess.Popen`, `numpy.core.multiarray._reconstruct`, `collections.Counter`, ... —
stops the load with a `WeightFileError` naming it, before anything can be called. `persistent_load`
accepts only `('storage', <storage class>, key, location, numel)` records. The result is a lazy table
name -> (storage key, dtype, offset, shape, stride); `get(k)` memory-maps just the bytes the tensor
covers (torch stores members uncompressed), applies offset/stride, and copies them out (C-contiguous,
nothing left referencing the file). Compressed members, which torch never writes, are decompressed.

Rules on the top-level object: it must be a dict of str -> tensor. A checkpoint wrapper whose values
hold no tensor and whose "state_dict" or "model" entry (exactly one of the two) is a dict is unwrapped
(its other entries are ignored). Any other non-tensor value is an error naming its key (nothing is
skipped silently). Per-tensor `metadata` (torch's lazy neg/conj bits) is refused, as are storages of
any dtype outside `STORAGE_DTYPES`. Member CRCs are not checked for memory-mapped members (like
SafetensorsFile, integrity is the business of the SHA-256 recorded at conversion).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator

import ml_dtypes
import numpy as np

from janusflow_jax.safetensors_io import WeightFileError

STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")

#: Every global a state-dict pickle may name, as "module.name".
ALLOWED_GLOBALS: frozenset[str] = frozenset(
    ["collections.OrderedDict"] + [f"torch._utils.{n}" for n in _REBUILDERS] + [f"torch.{n}" for n in STORAGE_DTYPES]
)

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header (30 bytes)
_LOCAL_SIG = b"PK\x03\x04"
_PKL_MEMBER = re.compile(r"([^/]+/)data\.pkl")
_MAX_PKL = 1 << 30  # a state dict's data.pkl is ~100 kB even for 7B models


class _StorageType:
    """Stand-in for a `torch.<X>Storage` class: carries only the element dtype; not callable."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __setstate__(self, state):
        raise TypeError("a storage class cannot take pickled state")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    __slots__ = ("dtype", "key", "numel", "stype")

    def __init__(self, key: str, stype: _StorageType, numel: int):
        self.key, self.stype, self.dtype, self.numel = key, stype, stype.dtype, numel

    def __setstate__(self, state):
        raise TypeError("a storage cannot take pickled state")


class _Tensor:
    __slots__ = ("metadata", "offset", "shape", "storage", "stride")

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple, metadata):
        self.storage, self.offset, self.shape, self.stride, self.metadata = storage, offset, shape, stride, metadata

    def __setstate__(self, state):
        raise TypeError("a tensor cannot take pickled state (tensor subclasses are not read)")

    @property
    def extent(self) -> int:
        """Storage elements from `offset` that the tensor covers (0 for an empty tensor)."""
        if any(n == 0 for n in self.shape):
            return 0
        return 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int_tuple(x) -> bool:
    return isinstance(x, tuple) and all(_is_int(v) and v >= 0 for v in x)


def _kind(v) -> str:
    if isinstance(v, _StorageType):
        return "a storage class"
    if isinstance(v, _Storage):
        return "a bare storage"
    name = type(v).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


class _Refused(Exception):
    """Raised inside the unpickler; turned into one WeightFileError line by TorchPickleFile."""


class _StateDictUnpickler(pickle.Unpickler):
    """`find_class` returns inert stand-ins for ALLOWED_GLOBALS and refuses everything else."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), fix_imports=False, encoding="utf-8")
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        qual = f"{module}.{name}"
        if qual not in ALLOWED_GLOBALS:
            raise _Refused(
                f"refused global {qual!r} in data.pkl (not one of the {len(ALLOWED_GLOBALS)} globals a plain "
                "state dict needs; nothing from the file was executed)"
            )
        if qual == "collections.OrderedDict":
            return collections.OrderedDict
        if module == "torch":
            return _StorageType(name, STORAGE_DTYPES[name])
        return getattr(self, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"unsupported persistent id {_short(pid)} in data.pkl (only storage records are read)")
        _, stype, key, location, numel = pid
        if not (isinstance(stype, _StorageType) and isinstance(key, str) and isinstance(location, str)):
            raise _Refused(f"malformed storage record {_short(pid)} in data.pkl")
        if not (_is_int(numel) and numel >= 0):
            raise _Refused(f"storage {key!r}: invalid element count {numel!r}")
        seen = self.storages.get(key)
        if seen is None:
            seen = self.storages[key] = _Storage(key, stype, numel)
        elif seen.dtype != stype.dtype or seen.numel != numel:
            raise _Refused(f"storage {key!r} is declared both as {seen.numel} x {seen.stype} and as {numel} x {stype}")
        return seen

    # The allowed rebuild functions, applied to stand-ins: they validate and record, nothing else.
    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        return self._rebuild_tensor_v2(storage, storage_offset, size, stride, False, collections.OrderedDict())

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
        if not isinstance(storage, _Storage):
            raise _Refused(f"_rebuild_tensor_v2 on {_kind(storage)}, not a storage record")
        if not (_is_int(storage_offset) and storage_offset >= 0 and _int_tuple(size) and _int_tuple(stride)):
            raise _Refused(
                f"tensor on storage {storage.key!r} has invalid offset/size/stride {storage_offset!r} {size!r} {stride!r}"
            )
        if len(size) != len(stride):
            raise _Refused(f"tensor on storage {storage.key!r}: size {size} and stride {stride} differ in rank")
        if not isinstance(requires_grad, bool) or not isinstance(backward_hooks, dict):
            raise _Refused(f"tensor on storage {storage.key!r}: malformed requires_grad/backward_hooks")
        if metadata is not None and not isinstance(metadata, dict):
            raise _Refused(f"tensor on storage {storage.key!r}: malformed metadata {metadata!r}")
        return _Tensor(storage, storage_offset, size, stride, metadata or None)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks):
        if not isinstance(data, _Tensor):
            raise _Refused(f"_rebuild_parameter on {_kind(data)}, not a tensor")
        return data

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        # `state` holds python attributes of the Parameter (already limited to the allowed globals);
        # they do not change the values, so they are dropped.
        return self._rebuild_parameter(data, requires_grad, backward_hooks)


def _short(x, n: int = 80) -> str:
    r = repr(x)
    return r if len(r) <= n else r[: n - 3] + "..."


class TorchPickleFile:
    """Lazy view of one `torch.save` zip file: `keys()`, `shape(k)`, `dtype(k)`, `get(k)` (np.ndarray)."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise WeightFileError(f"{path}: file not found")
        self.path = path
        self._size = os.path.getsize(path)
        with open(path, "rb") as f:
            magic = f.read(8)
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            raise WeightFileError(self._not_zip(magic, e)) from None
        except (OSError, EOFError, ValueError) as e:
            raise WeightFileError(f"{path}: truncated or corrupt zip archive ({e})") from None
        with zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                dup = min({n for n in names if names.count(n) > 1})
                raise WeightFileError(f"{path}: zip archive has duplicate member {dup!r} (refused as ambiguous)")
            members = {i.filename: i for i in infos}
            pkls = [n for n in names if _PKL_MEMBER.fullmatch(n)]
            if len(pkls) != 1:
                what = "no <archive>/data.pkl member" if not pkls else f"several data.pkl members {pkls}"
                raise WeightFileError(f"{path}: {what}; not a torch.save checkpoint")
            prefix = _PKL_MEMBER.fullmatch(pkls[0]).group(1)
            if members[pkls[0]].file_size > _MAX_PKL:
                raise WeightFileError(f"{path}: implausibly large {pkls[0]} ({members[pkls[0]].file_size} B); refused")
            self.archive = prefix[:-1]
            self.byteorder = "little"
            try:
                if prefix + "byteorder" in members:
                    bo = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
                    if bo not in ("little", "big"):
                        raise WeightFileError(f"{path}: invalid byteorder record {bo!r}")
                    self.byteorder = bo
                pkl = zf.read(pkls[0])
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
                raise WeightFileError(f"{path}: truncated or corrupt zip archive ({e})") from None
        self.format = "torch.save zip"
        up = _StateDictUnpickler(pkl)
        try:
            obj = up.load()
        except _Refused as e:
            raise WeightFileError(f"{path}: {e}") from None
        except WeightFileError:
            raise
        except Exception as e:  # noqa: BLE001 -- malformed pickle: stack underflow, bad opcode, calling a stand-in, ...
            msg = str(e) if len(str(e)) <= 80 else str(e)[:77] + "..."
            raise WeightFileError(f"{path}: corrupt data.pkl ({type(e).__name__}: {msg})") from None
        self.wrapper, sd = self._state_dict(obj)
        self._tensors: dict[str, _Tensor] = {}
        self._members: dict[str, tuple[int, int, int]] = {}  # storage key -> (data offset, bytes, compress_type)
        for k, t in sd.items():
            self._check(k, t, members, prefix)
            self._tensors[k] = t

    # --- open-time validation ---

    def _not_zip(self, magic: bytes, e: Exception) -> str:
        if magic.startswith(b"PK"):
            return f"{self.path}: truncated or corrupt zip archive ({e})"
        if magic[:1] == b"\x80" or magic[:1] in (b"(", b"c", b"]", b"}"):
            return (
                f"{self.path}: legacy (pre-1.6, non-zip) torch pickle; not read (it is a raw pickle stream) — "
                "re-save it with a current torch.save or convert it to .safetensors"
            )
        return f"{self.path}: not a torch.save zip checkpoint (starts with {magic[:4]!r})"

    def _state_dict(self, obj) -> tuple[str | None, dict]:
        if not isinstance(obj, dict):
            raise WeightFileError(
                f"{self.path}: top-level object is {_kind(obj)}, not a state dict (a dict of name -> tensor)"
            )
        wrapper = None
        if obj and not any(isinstance(v, _Tensor) for v in obj.values()):
            inner = [k for k in ("state_dict", "model") if isinstance(obj.get(k), dict)]
            if len(inner) == 1:
                wrapper, obj = inner[0], obj[inner[0]]
        for k, v in obj.items():
            where = f"[{wrapper!r}]" if wrapper else ""
            if not isinstance(k, str):
                raise WeightFileError(f"{self.path}: state dict{where} has a non-string key {_short(k)}")
            if not isinstance(v, _Tensor):
                raise WeightFileError(
                    f"{self.path}: entry {k!r}{' in ' + repr(wrapper) if wrapper else ''} is {_kind(v)}, not a "
                    "tensor (only a dict of name -> tensor is read)"
                )
        return wrapper, obj

    def _check(self, k: str, t: _Tensor, members: dict, prefix: str) -> None:
        st = t.storage
        if t.metadata:
            raise WeightFileError(f"{self.path}: tensor {k!r} has tensor metadata {t.metadata!r} (not supported)")
        member = f"{prefix}data/{st.key}"
        if st.key not in self._members:
            info = members.get(member)
            if info is None:
                raise WeightFileError(
                    f"{self.path}: tensor {k!r} refers to storage {st.key!r}, which is missing from the archive "
                    f"(no member {member!r})"
                )
            want = st.numel * st.dtype.itemsize
            if info.file_size != want:
                raise WeightFileError(
                    f"{self.path}: storage {st.key!r} of tensor {k!r}: archive member has {info.file_size} B but "
                    f"data.pkl declares {st.numel} x {st.stype} = {want} B"
                )
            self._members[st.key] = (self._data_offset(info, member), info.file_size, info.compress_type)
        need = t.offset + t.extent if t.extent else 0
        if need > st.numel:
            raise WeightFileError(
                f"{self.path}: tensor {k!r} (shape {t.shape}, stride {t.stride}, offset {t.offset}) needs {need} "
                f"elements but its storage {st.key!r} holds {st.numel}"
            )

    def _data_offset(self, info: zipfile.ZipInfo, member: str) -> int:
        if info.flag_bits & 0x1:
            raise WeightFileError(f"{self.path}: member {member!r} is encrypted")
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(_LOCAL_HEADER.size)
        if len(head) < _LOCAL_HEADER.size or head[:4] != _LOCAL_SIG:
            raise WeightFileError(f"{self.path}: corrupt zip archive (bad local header for {member!r})")
        fields = _LOCAL_HEADER.unpack(head)
        start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
        if start + info.compress_size > self._size:
            raise WeightFileError(
                f"{self.path}: truncated file: member {member!r} ends at byte {start + info.compress_size} but the "
                f"file has {self._size} B"
            )
        return start

    # --- the SafetensorsFile interface ---

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, k: str) -> bool:
        return k in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def shape(self, k: str) -> tuple[int, ...]:
        return tuple(self._tensors[k].shape)

    def dtype(self, k: str) -> np.dtype:
        return self._tensors[k].storage.dtype

    def get(self, k: str) -> np.ndarray:
        t = self._tensors[k]
        dt = t.storage.dtype
        isz = dt.itemsize
        n = t.extent
        if n == 0:
            return np.zeros(t.shape, dt)
        start, nbytes = t.offset * isz, n * isz
        buf = self._read(t.storage.key, start, nbytes)
        flat = buf.view(dt)
        view = np.lib.stride_tricks.as_strided(
            flat, shape=t.shape, strides=tuple(s * isz for s in t.stride), writeable=False
        )
        out = np.array(view, dtype=dt, order="C", copy=True)
        del view, flat, buf
        if self.byteorder == "big" and isz > 1:
            out.view(np.dtype(f"u{isz}")).byteswap(inplace=True)
        return out

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for k in self._tensors:
            yield k, self.get(k)

    def _read(self, key: str, start: int, nbytes: int) -> np.ndarray:
        """`nbytes` bytes from byte `start` of storage `key`, as a uint8 array (memory-mapped if stored)."""
        off, _, ctype = self._members[key]
        if ctype == zipfile.ZIP_STORED:
            return np.memmap(self.path, dtype=np.uint8, mode="r", offset=off + start, shape=(nbytes,))
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.archive}/data/{key}") as m:
                if start:
                    m.seek(start)
                data = m.read(nbytes)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
            raise WeightFileError(f"{self.path}: corrupt compressed storage {key!r} ({e})") from None
        if len(data) != nbytes:
            raise WeightFileError(f"{self.path}: compressed storage {key!r} is shorter than declared")
        return np.frombuffer(data, dtype=np.uint8)

    def describe(self) -> str:
        w = f", unwrapped from {self.wrapper!r}" if self.wrapper else ""
        return f"{os.path.basename(self.path)} (torch.save zip, {len(self._tensors)} tensors{w})"
