"""Params-only Orbax checkpoints of a converted JanusFlow (+ its VAE), written atomically.

Layout of a checkpoint folder:
  params/          Orbax StandardCheckpointer tree {"janusflow": {...}, "vae": {...}}
  metadata.json    format tag, converter version, official config, VAE config, dtype, source SHA-256s
  tokenizer / processor files copied from the source folder (when present)

The folder is assembled under a temporary name beside the destination and renamed into place
only when complete, so an interrupted or failed write leaves no destination folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

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
    """Write `params` (nested dict of arrays) + metadata (+ files to copy) atomically to `dest`."""
    import orbax.checkpoint as ocp

    with atomic_dir(dest, overwrite=overwrite) as tmp:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(os.path.join(tmp, "params"), _stringify(params))
        ckptr.wait_until_finished()
        ckptr.close()
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, os.path.join(tmp, name))
        meta = dict(metadata, format=FORMAT)
        with open(os.path.join(tmp, METADATA), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
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
    dtype) places and casts the arrays as they are read."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)  # Orbax refuses relative paths
    read_metadata(path)
    ckptr = ocp.StandardCheckpointer()
    try:
        if target is not None:
            tree = ckptr.restore(os.path.join(path, "params"), _stringify(target))
        else:
            tree = ckptr.restore(os.path.join(path, "params"))
    finally:
        ckptr.close()
    return _destringify(tree)
