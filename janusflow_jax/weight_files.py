"""One tensor source over a checkpoint in any published layout (never torch, never executing anything).

`open_weights(folder, stem)` resolves, in this order:
  1. `{stem}.safetensors`
  2. `{stem}.safetensors.index.json`            (sharded safetensors)
  3. `pytorch_model.bin` if stem == "model", else `{stem}.bin`
  4. `pytorch_model.bin.index.json` if stem == "model", else `{stem}.bin.index.json`   (sharded pickles)
(diffusers names its VAE `diffusion_pytorch_model.{safetensors,bin}`: pass that stem). `folder` may
also be a file: a `.safetensors`, a torch pickle (`.bin`, `.pt`, `.pth`, `.ckpt`, `.pkl`) or an
`*.index.json`. Pickles are read by `torch_pickle.TorchPickleFile` (allow-listed, nothing executed).

Index files (`{"metadata": {...}, "weight_map": {tensor: shard_file}}`) are validated strictly: the
JSON, every shard named (a plain relative path inside the folder: no absolute path, no `..`, no
symlink resolving outside the folder — except into the `blobs/` of a Hugging Face cache repo when the
folder is one of its `snapshots/<rev>`), and the key sets (every listed tensor is in its shard, every
tensor of every shard is listed for that shard, no tensor in two shards, no tensor listed twice).

The returned `Weights` is lazy like its readers (one tensor materialised per `get`): `keys()`,
`shape(k)`, `dtype(k)`, `get(k)`, `files` (every file read: index first, then shards), `describe()`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np

from janusflow_jax.safetensors_io import PICKLE_SUFFIXES, SafetensorsFile, WeightFileError
from janusflow_jax.torch_pickle import TorchPickleFile

INDEX_SUFFIX = ".index.json"


def candidates(stem: str = "model") -> list[str]:
    """The file names `open_weights` looks for in a folder, in order."""
    pt = "pytorch_model" if stem == "model" else stem
    return [f"{stem}.safetensors", f"{stem}.safetensors{INDEX_SUFFIX}", f"{pt}.bin", f"{pt}.bin{INDEX_SUFFIX}"]


class Weights:
    """A read-only name -> tensor source over one checkpoint (one file, or an index and its shards)."""

    def __init__(self, path: str, kind: str, readers: list, files: list[str], metadata: dict | None = None):
        self.path = path
        self.kind = kind
        self.readers = readers
        self.files = files
        self.metadata = metadata or {}
        self._where: dict[str, object] = {}
        for r in readers:
            for k in r.keys():  # noqa: SIM118 -- readers are not dicts
                self._where[k] = r

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, k: str) -> bool:
        return k in self._where

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, k: str) -> tuple[int, ...]:
        return tuple(self._where[k].shape(k))

    def dtype(self, k: str) -> np.dtype:
        return self._where[k].dtype(k)

    def get(self, k: str) -> np.ndarray:
        return self._where[k].get(k)

    def read(self, k: str) -> np.ndarray:
        """`get(k)` as a fresh array that maps nothing (the streaming converter's read: a safetensors
        tensor is read with `readinto`; a pickle's `get` already copies out of a transient map)."""
        r = self._where[k]
        return r.read(k) if hasattr(r, "read") else r.get(k)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for k in self._where:
            yield k, self.get(k)

    def describe(self) -> str:
        if not self.path.endswith(INDEX_SUFFIX) and hasattr(self.readers[0], "describe"):
            return self.readers[0].describe()  # e.g. "... unwrapped from 'state_dict'"
        shards = f", {len(self.readers)} shards" if len(self.readers) > 1 or self.path.endswith(INDEX_SUFFIX) else ""
        return f"{os.path.basename(self.path)} ({self.kind}{shards}, {len(self)} tensors)"

    def __repr__(self) -> str:
        return f"Weights({self.path!r}: {self.describe()})"


def open_weights(folder: str, stem: str = "model") -> Weights:
    """A lazy tensor source over the checkpoint `stem` in `folder` (or over the file `folder`)."""
    if os.path.isfile(folder):
        return _open_file(folder)
    if not os.path.isdir(folder):
        raise WeightFileError(f"{folder}: no such file or folder")
    names = candidates(stem)
    for name in names:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return _open_file(p)
    raise WeightFileError(f"{folder}: no weights found (looked for {', '.join(names)})")


def _open_file(path: str) -> Weights:
    if path.endswith(INDEX_SUFFIX):
        return _open_index(path)
    reader = _reader(path)
    return Weights(path, _kind(path), [reader], [path], getattr(reader, "metadata", None))


def _kind(path: str) -> str:
    return "safetensors" if path.endswith(".safetensors") else "torch.save zip"


def _reader(path: str):
    if path.endswith(".safetensors"):
        return SafetensorsFile(path)
    if path.endswith(PICKLE_SUFFIXES):
        return TorchPickleFile(path)
    raise WeightFileError(f"{path}: unknown weight file type (expected .safetensors, a torch .bin, or *{INDEX_SUFFIX})")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


class _Duplicate(Exception):
    pass


def _open_index(index: str) -> Weights:
    folder = os.path.dirname(os.path.abspath(index))
    shard_suffix = index[: -len(INDEX_SUFFIX)]
    if shard_suffix.endswith(".safetensors"):
        kind, ok = "sharded safetensors", lambda s: s.endswith(".safetensors")
    elif shard_suffix.endswith(PICKLE_SUFFIXES):
        kind, ok = "sharded torch.save zip", lambda s: s.endswith(PICKLE_SUFFIXES)
    else:
        raise WeightFileError(
            f"{index}: unknown index type (expected *.safetensors{INDEX_SUFFIX} or *.bin{INDEX_SUFFIX})"
        )
    try:
        with open(index, encoding="utf-8") as f:
            doc = json.load(f, object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise WeightFileError(f"{index}: key {e.args[0]!r} appears twice in the index") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightFileError(f"{index}: invalid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise WeightFileError(f'{index}: not a checkpoint index (no "weight_map" object)')
    wmap = doc["weight_map"]
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise WeightFileError(f'{index}: "metadata" is not an object')
    if not wmap:
        raise WeightFileError(f'{index}: "weight_map" is empty')

    by_shard: dict[str, list[str]] = {}
    for t, s in wmap.items():
        if not isinstance(s, str) or not s:
            raise WeightFileError(f"{index}: weight_map entry {t!r} -> {s!r} is not a file name")
        by_shard.setdefault(s, []).append(t)
    real_folder = os.path.realpath(folder)
    roots = _allowed_roots(real_folder)
    shard_paths = {}
    for s, ts in by_shard.items():
        if os.path.isabs(s) or s.startswith(("/", "\\")) or (len(s) > 1 and s[1] == ":"):
            raise WeightFileError(f"{index}: shard {s!r} (for {ts[0]!r}) is an absolute path; refused")
        parts = s.replace("\\", "/").split("/")
        if ".." in parts or "\x00" in s:
            raise WeightFileError(f"{index}: shard {s!r} (for {ts[0]!r}) escapes the folder {folder}; refused")
        if not ok(s):
            raise WeightFileError(f"{index}: shard {s!r} (for {ts[0]!r}) does not match the index type ({kind})")
        p = os.path.join(folder, s)
        if not os.path.isfile(p):
            more = f" and {len(ts) - 1} more" if len(ts) > 1 else ""
            raise WeightFileError(f"{index}: shard {s!r} (listed for {ts[0]!r}{more}) not found")
        real = os.path.realpath(p)
        if not any(os.path.commonpath([real, r]) == r for r in roots):
            raise WeightFileError(f"{index}: shard {s!r} resolves to {real}, outside the folder {folder}; refused")
        shard_paths[s] = p

    readers = {s: _reader(p) for s, p in shard_paths.items()}
    where: dict[str, list[str]] = {}
    for s, r in readers.items():
        for t in r.keys():  # noqa: SIM118 -- readers are not dicts
            where.setdefault(t, []).append(s)
    for t, ss in where.items():
        if len(ss) > 1:
            raise WeightFileError(f"{index}: tensor {t!r} is stored in two shards, {ss[0]!r} and {ss[1]!r}")
    for t, s in wmap.items():
        if s not in where.get(t, ()):
            found = f" (it is in {where[t][0]!r})" if t in where else ""
            raise WeightFileError(f"{index}: tensor {t!r} is listed for shard {s!r}, which does not contain it{found}")
    for t, ss in where.items():
        if t not in wmap:
            raise WeightFileError(f"{index}: shard {ss[0]!r} holds tensor {t!r}, which the index does not list")
    ordered = sorted(readers)
    return Weights(index, kind, [readers[s] for s in ordered], [index] + [shard_paths[s] for s in ordered], metadata)


def _allowed_roots(real_folder: str) -> list[str]:
    """Where a shard's real path may lie: the folder, plus `<repo>/blobs` for a HF cache `<repo>/snapshots/<rev>`."""
    roots = [real_folder]
    parent = os.path.dirname(real_folder)
    if os.path.basename(parent) == "snapshots":
        blobs = os.path.join(os.path.dirname(parent), "blobs")
        if os.path.isdir(blobs):
            roots.append(os.path.realpath(blobs))
    return roots
