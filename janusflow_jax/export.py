"""Export a model of either family back to the layouts PyTorch users load (no torch).

Layouts (`janusflow-export CHECKPOINT --to official|hf --out DIR`):
  official  the family's official folder: `config.json` (`MultiModalityCausalLM`), `model.safetensors`
            or `model-0000N-of-0000M.safetensors` + `model.safetensors.index.json`, the tokenizer /
            processor files; JanusFlow adds `vae/` (diffusers `config.json` +
            `diffusion_pytorch_model.safetensors`, sharded the same way), where the loader looks.
  hf        Janus only: transformers' `JanusForConditionalGeneration.save_pretrained` folder
            (`config.json` of `JanusConfig`, `generation_config.json`, `model.*` keys, `lm_head`).

The key map is the import tables of `weights.py` / `janus/weights.py` run backwards, derived from
the `Rule` objects (no second table): a parameter leaf is matched against each rule's target
template (its `{n}` holes take the sub-pattern of the torch regex's group n), the torch key is the
regex with its groups filled in, and the inverse transform restores the torch layout. Every
generated key is checked by the forward direction — the first rule that matches it (as the importer
picks) must be the same rule and give the same leaf — so import(export(params)) is the identity by
construction. A stacked leaf gives one tensor per layer, a part-filled leaf one per part (q/k/v).
Where two rules write one leaf (diffusers' old and new attention names), the first one is used.

Not exported: tensors the import tables skip by name (`IGNORED`: the SigLIP `attn_pool.*` head,
never run and not kept by the converter; the VQ's `codebook_used` statistics). The official
loaders are not strict, so they report them as missing and keep their initial values.

The plan (`Tensor`: torch name → shape, dtype, source leaf) needs only shapes, so it is computed
for abstract (`jax.eval_shape`) parameters as well. Writes are atomic: everything is built in a
temporary sibling folder, fsynced, and renamed to `out` at the end; an existing `out` is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from janusflow_jax import checkpoint, weights
from janusflow_jax.config import ConfigError
from janusflow_jax.safetensors_io import save_safetensors
from janusflow_jax.weights import Rule

__all__ = [
    "LAYOUTS",
    "ExportError",
    "Tensor",
    "export",
    "export_model",
    "invert_rules",
    "parse_size",
    "plan_for",
    "resolve_checkpoint",
    "shard_plan",
]

LAYOUTS = ("official", "hf")
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
DEFAULT_MAX_SHARD = "5GB"  # transformers' save_pretrained default
SAFETENSORS_METADATA = {"format": "pt"}  # what transformers / diffusers check in a safetensors header
INDEX_SUFFIX = ".safetensors.index.json"


_NO_HF_JANUSFLOW = "JanusFlow has no transformers layout (transformers has no JanusFlow model); use --to official"


class ExportError(ValueError):
    """An input that cannot be exported (layout, output folder, checkpoint, architecture)."""


# --- the inverted tables ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of an exported file: its torch `name`, `shape` and `dtype`, and where it comes
    from: `leaf` (the parameter path in `tree`), `layer` (stacked leaves), `part` ((axis, index) of
    a part-filled leaf) and the import `transform` it inverts."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    tree: str
    leaf: tuple
    layer: int | None = None
    part: tuple[int, int] | None = None
    transform: str = "identity"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


_META = set(".^$*+?{}[]|()")


def _pattern_pieces(pattern: str) -> list[tuple[str, str]]:
    """A torch-key regex as [("lit", text) | ("group", sub-regex)]: top-level capturing groups and
    the literal text between them. Anything else at the top level (a quantifier, a class, an
    unescaped metacharacter, a nested capturing group) cannot be inverted and raises."""
    out: list[tuple[str, str]] = []
    lit = ""
    i, n = 0, len(pattern)

    def fail(why):
        raise ExportError(f"import pattern {pattern!r} cannot be inverted ({why})")

    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n or pattern[i + 1].isalnum():
                fail(f"escape {pattern[i : i + 2]!r} outside a group")
            lit += pattern[i + 1]
            i += 2
        elif c == "(":
            if pattern.startswith("(?", i):
                fail("a non-capturing group outside a capturing one")
            depth, j = 1, i + 1
            while j < n and depth:
                if pattern[j] == "\\":
                    j += 2
                    continue
                if pattern[j] == "[":
                    j = pattern.index("]", j + 1) + 1
                    continue
                if pattern[j] == "(":
                    if not pattern.startswith("(?", j):
                        fail("a nested capturing group")
                    depth += 1
                elif pattern[j] == ")":
                    depth -= 1
                j += 1
            if depth:
                fail("unbalanced parentheses")
            if lit:
                out.append(("lit", lit))
                lit = ""
            out.append(("group", pattern[i + 1 : j - 1]))
            i = j
        elif c in _META:
            fail(f"{c!r} outside a group")
        else:
            lit += c
            i += 1
    if lit:
        out.append(("lit", lit))
    return out


@dataclasses.dataclass
class _Inverse:
    index: int  # position in the table (the importer takes the first rule that matches a key)
    rule: Rule
    pieces: list[tuple[str, str]]
    target: re.Pattern  # matches a dotted leaf path; named groups g<n> hold the torch groups
    stacked: bool

    def key(self, groups: dict[int, str]) -> str:
        out, g = [], 0
        for kind, text in self.pieces:
            if kind == "lit":
                out.append(text)
            else:
                g += 1
                out.append(groups[g])
        return "".join(out)


def _inverse(index: int, rule: Rule) -> _Inverse:
    pieces = _pattern_pieces(rule.pattern)
    subs = [text for kind, text in pieces if kind == "group"]
    comps = rule.target.split(".")
    stacked = "*" in comps
    if any("*" in c for c in comps if c != "*"):
        raise ExportError(f"rule target {rule.target!r}: the layer marker '*' must be a whole path component")
    joined = ".".join(c for c in comps if c != "*")
    rx, pos, used = "", 0, set()
    for m in re.finditer(r"\{(\d+)\}", joined):
        g = int(m.group(1))
        if not 1 <= g <= len(subs) or (stacked and g == 1):
            raise ExportError(f"rule target {rule.target!r}: group {{{g}}} is not a named group of {rule.pattern!r}")
        rx += re.escape(joined[pos : m.start()])
        rx += f"(?P=g{g})" if g in used else f"(?P<g{g}>{subs[g - 1]})"
        used.add(g)
        pos = m.end()
    rx += re.escape(joined[pos:])
    need = set(range(2 if stacked else 1, len(subs) + 1))
    if need - used:
        raise ExportError(
            f"rule {rule.pattern!r} → {rule.target!r}: groups {sorted(need - used)} are not in the target"
        )
    return _Inverse(index, rule, pieces, re.compile(rx), stacked)


def _torch_shape(rule: Rule, leaf: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape whose import (`weights._apply(rule.transform, ...)`) gives `leaf`."""
    t = rule.transform
    if t == "identity":
        return leaf
    if t == "linear":
        return leaf[::-1]
    if t == "heads_in":  # [D, (X,) N, H] → [X·N·H, D]
        return (math.prod(leaf[1:]), leaf[0])
    if t == "heads_bias":
        return (math.prod(leaf),)
    if t == "heads_out":  # [N, H, D] → [D, N·H]
        return (leaf[-1], math.prod(leaf[:-1]))
    if t == "conv":  # HWIO → OIHW
        return (leaf[3], leaf[2], leaf[0], leaf[1])
    if t == "conv1x1_linear":  # [I, O] → [O, I, 1, 1]
        return (leaf[1], leaf[0], 1, 1)
    if t == "squeeze":
        if rule.torch_ndim is None or rule.torch_ndim < len(leaf):
            raise ExportError(f"rule {rule.pattern!r}: a squeeze rule needs torch_ndim to be exported")
        return (1,) * (rule.torch_ndim - len(leaf)) + tuple(leaf)
    raise ExportError(f"rule {rule.pattern!r}: transform {t!r} has no inverse")


def _to_torch(transform: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `weights._apply(transform, ·)`: a leaf (slice) → the torch tensor of `shape`."""
    if transform in ("identity", "heads_bias", "squeeze"):
        out = a.reshape(shape)
    elif transform == "linear":
        out = a.T
    elif transform == "heads_in":
        out = a.reshape(a.shape[0], -1).T
    elif transform == "heads_out":
        out = a.reshape(-1, a.shape[-1]).T
    elif transform == "conv":
        out = a.transpose(3, 2, 0, 1)
    elif transform == "conv1x1_linear":
        out = a.T[:, :, None, None]
    else:
        raise ExportError(f"transform {transform!r} has no inverse")
    assert out.shape == tuple(shape), (transform, a.shape, out.shape, shape)
    return out


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def invert_rules(
    rules: Iterable[Rule],
    targets: Mapping[tuple, tuple[tuple[int, ...], Any]],
    *,
    tree: str,
    dtype: Any = None,
    source: str = "model",
) -> list[Tensor]:
    """The torch tensors whose import through `rules` gives the leaves `targets` ({path: (shape,
    dtype)}, e.g. `weights.param_targets(abstract_module)`), in natural key order. `dtype`: the
    stored dtype (default: each leaf's). Raises ExportError naming every leaf no rule writes,
    every incomplete part set, and every key the forward direction would not map back."""
    table = list(rules)
    inverses = [_inverse(i, r) for i, r in enumerate(table)]
    forward = [re.compile(r.pattern) for r in table]
    out: list[Tensor] = []
    problems: list[str] = []
    for path, (shape, leaf_dtype) in targets.items():
        dotted = ".".join(map(str, path))
        hits = [(inv, m) for inv in inverses if (m := inv.target.fullmatch(dotted))]
        if not hits:
            problems.append(f"{dotted}: no rule writes this parameter")
            continue
        first = hits[0][0]
        if any(inv.stacked != first.stacked for inv, _ in hits):
            problems.append(f"{dotted}: written by stacked and unstacked rules")
            continue
        leaf = tuple(shape[1:]) if first.stacked else tuple(shape)
        if first.rule.part is None:
            chosen = [hits[0]]
        else:
            axis = first.rule.part[0]
            by_part: dict[int, tuple] = {}
            for inv, m in hits:
                if inv.rule.part is not None and inv.rule.part[0] == axis:
                    by_part.setdefault(inv.rule.part[1], (inv, m))
            lost = [j for j in range(leaf[axis]) if j not in by_part] if axis < len(leaf) else ["all"]
            if lost:
                problems.append(f"{dotted}: no rule writes part(s) {lost} of axis {axis}")
                continue
            chosen = [by_part[j] for j in range(leaf[axis])]
        odt = np.dtype(dtype if dtype is not None else leaf_dtype)
        for layer in range(shape[0]) if first.stacked else [None]:
            for inv, m in chosen:
                groups = {int(k[1:]): v for k, v in m.groupdict().items()}
                if layer is not None:
                    groups[1] = str(layer)
                name = inv.key(groups)
                part_leaf = leaf
                if inv.rule.part is not None:
                    ax = inv.rule.part[0]
                    part_leaf = leaf[:ax] + leaf[ax + 1 :]
                try:
                    tshape = _torch_shape(inv.rule, part_leaf)
                except ExportError as e:
                    problems.append(str(e))
                    continue
                # the forward direction: the importer's first matching rule must be this one, same leaf
                back = next(((i, fm) for i, rx in enumerate(forward) if (fm := rx.fullmatch(name))), None)
                want = tuple(groups[g] for g in sorted(groups))
                if back is None or back[0] != inv.index or back[1].groups() != want:
                    got = "no rule" if back is None else repr(table[back[0]].pattern)
                    problems.append(f"{dotted}: exported name {name!r} would import through {got}")
                    continue
                out.append(Tensor(name, tshape, odt, tree, tuple(path), layer, inv.rule.part, inv.rule.transform))
    seen: dict[str, Tensor] = {}
    for t in out:
        if t.name in seen:
            problems.append(f"{t.name}: written from both {seen[t.name].leaf} and {t.leaf}")
        seen[t.name] = t
    if problems:
        raise ExportError(f"{source}: " + "; ".join(problems[:20]) + (" …" if len(problems) > 20 else ""))
    return sorted(out, key=lambda t: _natural(t.name))


def plan_for(family: str, layout: str, cfg, targets: Mapping[str, Mapping], *, dtype: Any = None) -> dict[str, list]:
    """{file stem: [Tensor]} of one export: `targets` holds the leaves of each parameter tree
    ({"janusflow": …, "vae": …} or {"janus": …}); stems are relative to the output folder
    ("model", and "vae/diffusion_pytorch_model" for JanusFlow)."""
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    if family == "janusflow":
        if layout != "official":
            raise ExportError(_NO_HF_JANUSFLOW)
        return {
            "model": invert_rules(weights.JANUSFLOW_RULES, targets["janusflow"], tree="janusflow", dtype=dtype),
            "vae/diffusion_pytorch_model": invert_rules(
                weights.VAE_RULES, targets["vae"], tree="vae", dtype=dtype, source="vae"
            ),
        }
    if family == "janus":
        from janusflow_jax.janus import weights as janus_weights

        rules = janus_weights.official_rules(cfg) if layout == "official" else janus_weights.hf_rules(cfg)
        return {"model": invert_rules(rules, targets["janus"], tree="janus", dtype=dtype)}
    raise ExportError(f"unknown model family {family!r}")


# --- files ----------------------------------------------------------------------------------------

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(text: str | int) -> int:
    """A shard size as transformers writes it: bytes, or a number with KB/MB/GB/TB (powers of 1000)
    or KiB/MiB/GiB/TiB (powers of 1024)."""
    if isinstance(text, int):
        n = text
    else:
        m = _SIZE.fullmatch(str(text))
        if not m or (m.group(2) or "").upper() not in _UNITS:
            raise ExportError(f"--max-shard-size {text!r}: not a size (e.g. 5GB, 500MB, 2GiB, 1000000)")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if n <= 0:
        raise ExportError(f"--max-shard-size {text!r} must be positive")
    return n


def shard_plan(tensors: list[Tensor], max_bytes: int) -> list[list[Tensor]]:
    """Consecutive tensors into shards of at most `max_bytes` each (a bigger tensor alone), in order."""
    shards: list[list[Tensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(stem: str, n: int) -> list[str]:
    base = os.path.basename(stem)
    if n == 1:
        return [f"{base}.safetensors"]
    return [f"{base}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _tensor_value(t: Tensor, leaves: Mapping[str, Mapping[tuple, Any]]) -> np.ndarray:
    """The torch tensor `t` from its leaf: the layer / part sliced first (on the leaf's device, so a
    stacked leaf is never copied whole), then to host (a view where the leaf is already host memory)."""
    a = leaves[t.tree][t.leaf]
    if t.layer is not None:
        a = a[t.layer]
    if t.part is not None:
        axis, idx = t.part
        a = a[(slice(None),) * axis + (idx,)]
    return np.ascontiguousarray(_to_torch(t.transform, np.asarray(a), t.shape).astype(t.dtype, copy=False))


def write_weights(
    folder: str,
    stem: str,
    tensors: list[Tensor],
    leaves: Mapping[str, Mapping[tuple, Any]],
    *,
    max_shard_size: int,
    on_tensor: Callable[[Tensor], None] | None = None,
) -> list[str]:
    """Write `tensors` as `stem.safetensors`, or as shards + `stem.safetensors.index.json` (standard
    HF index) when they exceed `max_shard_size`; one shard in memory at a time. Returns the files."""
    shards = shard_plan(tensors, max_shard_size)
    names = shard_names(stem, len(shards))
    sub = os.path.join(folder, os.path.dirname(stem))
    os.makedirs(sub, exist_ok=True)
    files = []
    for shard, name in zip(shards, names):
        data = {}
        for t in shard:
            data[t.name] = _tensor_value(t, leaves)
            if on_tensor is not None:
                on_tensor(t)
        path = os.path.join(sub, name)
        save_safetensors(path, data, SAFETENSORS_METADATA)
        files.append(path)
        del data
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: name for shard, name in zip(shards, names) for t in shard},
        }
        path = os.path.join(sub, os.path.basename(stem) + INDEX_SUFFIX)
        _write_json(path, index)
        files.append(path)
    return files


@contextlib.contextmanager
def atomic_folder(dest: str):
    """A temporary sibling of `dest` that becomes `dest` (every file and folder fsynced first) only
    if the block finishes; an existing `dest` is refused, and a failed block leaves nothing."""
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        raise ExportError(f"{dest} already exists (an export never overwrites; choose a new --out)")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.partial-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would become the output folder's mode
        yield tmp
        for root, _, files in os.walk(tmp):
            for f in files:
                _fsync(os.path.join(root, f))
            _fsync(root)
        if os.path.lexists(dest):
            raise ExportError(f"{dest} appeared while the export was written; the export is discarded")
        os.rename(tmp, dest)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- what is exported -----------------------------------------------------------------------------


def resolve_checkpoint(path: str | None) -> str:
    """The folder `janusflow_jax.load` will read for CHECKPOINT: None or "default" → the shipped
    model; a training run directory (`janusflow-train`'s run.out_dir) → its `export/`."""
    from janusflow_jax.model import shipped_path

    path = shipped_path(path)
    if not os.path.exists(path):
        raise ExportError(f"{path}: no such checkpoint or model folder")
    if not os.path.isdir(path):
        raise ExportError(f"{path}: not a folder (pass a model folder, a checkpoint or a training run directory)")
    marks = ("config.json", checkpoint.METADATA)
    if not any(os.path.exists(os.path.join(path, m)) for m in marks) and (
        os.path.isdir(os.path.join(path, "checkpoints")) or os.path.exists(os.path.join(path, "export"))
    ):
        export_dir = os.path.join(path, "export")
        if not checkpoint.is_checkpoint(export_dir):
            raise ExportError(
                f"{path} is a training run directory with no export yet (its export/ is written at the end "
                "of the run, or every run.export_every steps)"
            )
        path = export_dir
    if checkpoint.is_checkpoint(path) and checkpoint.read_metadata(path).get("kind") == "vae":
        raise ExportError(f"{path} holds only a VAE (a janusflow-train stage 'vae' export), not a model")
    return path


def _janus_config(path: str):
    """The JanusConfig of a Janus folder or checkpoint, from its config.json / metadata only."""
    from janusflow_jax.config import read_json
    from janusflow_jax.janus import config as janus_config

    try:
        if checkpoint.is_checkpoint(path):
            meta = checkpoint.read_metadata(path)
            return janus_config.from_official_json(meta["config"], gen_image_size=meta.get("gen_image_size"))
        d = read_json(os.path.join(path, "config.json"))
        return (
            janus_config.from_hf_json(d) if janus_config.is_hf_janus_config(d) else janus_config.from_official_json(d)
        )
    except (ConfigError, checkpoint.CheckpointError, KeyError) as e:
        raise ExportError(f"{path}: {e}") from None


def _processor_files(folder: str | None) -> dict[str, str]:
    if folder is None:
        return {}
    return {n: os.path.join(folder, n) for n in checkpoint.PROCESSOR_FILES if os.path.isfile(os.path.join(folder, n))}


def _janus_token_ids(model) -> dict[str, int]:
    if model.processor_dir is None or not os.path.isfile(os.path.join(model.processor_dir, "tokenizer.json")):
        return {}
    p = model.processor
    ids = {
        "bos_id": p.bos_id,
        "eos_id": p.eos_id,
        "pad_id": p.pad_id,
        "image_id": p.image_id,
        "boi_id": p.image_start_id,
    }
    return {k: int(v) for k, v in ids.items() if v is not None}


def _trees(model) -> dict[str, Any]:
    from flax import nnx

    if model.family == "janusflow":
        return {"janusflow": nnx.to_pure_dict(model.params), "vae": nnx.to_pure_dict(model.vae_params)}
    return {"janus": nnx.to_pure_dict(model.params)}


def _configs(model, layout: str, dtype: str) -> dict[str, Any]:
    """{relative path: JSON object} of the config files of one export."""
    try:
        if model.family == "janusflow":
            cfg = model.cfg.to_official_json()
            cfg["torch_dtype"] = cfg["language_config"]["torch_dtype"] = dtype
            return {"config.json": cfg, "vae/config.json": model.vae_cfg.to_diffusers()}
        if layout == "official":
            cfg = model.cfg.to_official_json()
            cfg["torch_dtype"] = cfg["language_config"]["torch_dtype"] = dtype
            return {"config.json": cfg}
        ids = _janus_token_ids(model)
        out = {"config.json": model.cfg.to_hf_json(ids, dtype)}
        gen = {f"{k}_token_id": ids[f"{k}_id"] for k in ("bos", "eos", "pad") if f"{k}_id" in ids}
        if "boi_id" in ids:
            gen["generation_kwargs"] = {"boi_token_id": ids["boi_id"]}
        out["generation_config.json"] = gen
        return out
    except ConfigError as e:
        raise ExportError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class Summary:
    out: str
    num_tensors: int
    files: list[str]
    total_bytes: int


def export_model(
    model,
    out: str,
    *,
    to: str = "official",
    dtype: str = "bfloat16",
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
    progress: Callable[[int], Callable[[Tensor], None]] | None = None,
) -> Summary:
    """Write a loaded `JanusFlowModel` / `JanusModel` to `out` in layout `to`, tensors stored in
    `dtype` (round-to-nearest-even from wider parameters). `progress(total)` is called once the
    plan is known and returns the per-tensor callback. Raises ExportError before writing anything
    for a bad layout, an architecture the layout cannot express, or an existing `out`."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    max_bytes = parse_size(max_shard_size)
    if os.path.lexists(out):
        raise ExportError(f"{os.path.abspath(out)} already exists (an export never overwrites; choose a new --out)")
    trees = _trees(model)
    leaves = {name: weights.flatten_params(tree) for name, tree in trees.items()}
    targets = {name: {p: (tuple(a.shape), a.dtype) for p, a in flat.items()} for name, flat in leaves.items()}
    plan = plan_for(model.family, to, model.cfg, targets, dtype=DTYPES[dtype])
    configs = _configs(model, to, dtype)
    extra = _processor_files(model.processor_dir)
    on_tensor = progress(sum(len(v) for v in plan.values())) if progress is not None else None
    files: list[str] = []
    with atomic_folder(out) as tmp:
        for stem, tensors in plan.items():
            for f in write_weights(tmp, stem, tensors, leaves, max_shard_size=max_bytes, on_tensor=on_tensor):
                files.append(os.path.relpath(f, tmp))
        for rel, obj in configs.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            _write_json(os.path.join(tmp, rel), obj)
            files.append(rel)
        for name, src in extra.items():
            shutil.copyfile(src, os.path.join(tmp, name))
            files.append(name)
    total = sum(t.nbytes for v in plan.values() for t in v)
    return Summary(os.path.abspath(out), sum(len(v) for v in plan.values()), sorted(files), total)


def export(
    checkpoint_path: str | None,
    out: str,
    *,
    to: str = "official",
    dtype: str = "bfloat16",
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
    progress: Callable[[int], Callable[[Tensor], None]] | None = None,
) -> Summary:
    """Load CHECKPOINT (anything `janusflow_jax.load` reads, a training run directory, or
    None/"default" for the shipped model) on one CPU device in `dtype`, then `export_model`."""
    import jax

    from janusflow_jax.model import detect_family, load
    from janusflow_jax.sharding import make_mesh

    if to not in LAYOUTS:
        raise ExportError(f"unknown layout {to!r} (expected one of {', '.join(LAYOUTS)})")
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    parse_size(max_shard_size)
    if os.path.lexists(out):
        raise ExportError(f"{os.path.abspath(out)} already exists (an export never overwrites; choose a new --out)")
    path = resolve_checkpoint(checkpoint_path)
    try:
        family = detect_family(path)
    except ValueError as e:
        raise ExportError(str(e)) from None
    if family == "janusflow" and to != "official":
        raise ExportError(_NO_HF_JANUSFLOW)
    if family == "janus" and to == "hf":
        try:  # an architecture transformers cannot hold: say so before loading the weights
            _janus_config(path).to_hf_json()
        except ConfigError as e:
            raise ExportError(f"{path}: {e}") from None
    try:
        model = load(path, dtype=dtype, mesh=make_mesh(devices=jax.devices("cpu")[:1]))
    except Exception as e:  # noqa: BLE001 -- the readers, Orbax, tensorstore: one line naming the checkpoint
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(msg if path in msg else f"{path}: cannot be loaded ({type(e).__name__}: {msg})") from None
    return export_model(model, out, to=to, dtype=dtype, max_shard_size=max_shard_size, progress=progress)
