"""A strict, torch-free safetensors reader/writer (bfloat16 via ml_dtypes, memory-mapped).

The `safetensors` package's numpy backend cannot return bfloat16, and the official JanusFlow
checkpoint is bfloat16, so we read the (simple, documented) format ourselves:
8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, raw data.
Every tensor is validated against the file size, so a truncated file is reported by name.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class WeightFileError(ValueError):
    """A weight file that is missing, not safetensors, truncated or corrupt."""


def refuse_pickle(path: str) -> None:
    if path.endswith(PICKLE_SUFFIXES):
        raise WeightFileError(
            f"{path}: pickled PyTorch weights are never loaded (arbitrary code execution risk); "
            "convert them to .safetensors first"
        )


class SafetensorsFile:
    """Lazy view of one .safetensors file: `keys()`, `shape(k)`, `dtype(k)`, `get(k)` (np.ndarray)."""

    def __init__(self, path: str):
        refuse_pickle(path)
        if not os.path.isfile(path):
            raise WeightFileError(f"{path}: file not found")
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightFileError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise WeightFileError(f"{path}: truncated or corrupt safetensors header (length {n}, file {size} B)")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise WeightFileError(f"{path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise WeightFileError(f"{path}: corrupt safetensors header")
        self.metadata = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        self._info: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        data_size = size - self._base
        for k, v in header.items():
            try:
                dt = _DTYPES[v["dtype"]]
                shape = tuple(int(s) for s in v["shape"])
                start, end = (int(o) for o in v["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise WeightFileError(f"{path}: tensor {k!r} has an invalid header entry {v}") from None
            if end - start != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
                raise WeightFileError(f"{path}: tensor {k!r} byte range does not match shape {shape} {v['dtype']}")
            if end > data_size:
                raise WeightFileError(
                    f"{path}: truncated file: tensor {k!r} ends at byte {self._base + end} but the file has {size} B"
                )
            self._info[k] = (dt, shape, start, end)
        self._mm = np.memmap(path, dtype=np.uint8, mode="r") if size > 0 else None

    def keys(self) -> list[str]:
        return list(self._info)

    def __contains__(self, k: str) -> bool:
        return k in self._info

    def shape(self, k: str) -> tuple[int, ...]:
        return self._info[k][1]

    def dtype(self, k: str) -> np.dtype:
        return self._info[k][0]

    def get(self, k: str) -> np.ndarray:
        dt, shape, start, end = self._info[k]
        raw = self._mm[self._base + start : self._base + end]
        return np.frombuffer(raw, dtype=dt).reshape(shape)

    def read(self, k: str) -> np.ndarray:
        """Like `get`, but a fresh array read with `readinto` (nothing mapped: the file's pages stay in
        the page cache, out of this process's resident memory, as a streaming conversion needs)."""
        dt, shape, start, end = self._info[k]
        out = np.empty(shape, dt)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self._base + start)
            got = 0
            while got < end - start:
                n = f.readinto(buf[got:])
                if not n:
                    raise WeightFileError(f"{self.path}: tensor {k!r} is cut short (file changed while reading)")
                got += n
        return out

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for k in self._info:
            yield k, self.get(k)


def save_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` to `path` in the safetensors format (written to a temp file, then renamed)."""
    header: dict = {}
    offset = 0
    arrays = []
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        if a.dtype not in _NAMES:
            raise WeightFileError(f"cannot store dtype {a.dtype} of {k!r} in safetensors")
        header[k] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)
