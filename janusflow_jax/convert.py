"""Conversion of an official folder of either family (JanusFlow + diffusers VAE; Janus, official or
transformers layout) into a janusflow-jax checkpoint, or of a janusflow-jax checkpoint into another
stored dtype.

Streaming: the mapping is first checked whole on the file headers (every strictness error raised
before anything is written); then one pass reads each tensor (`Weights.read`: a fresh copy, the
files are not mapped), transforms and casts it, and hands it to `checkpoint.save_streamed`, which
writes it into its place (a whole leaf, or one layer of a stacked leaf) and lets it go. Peak
resident memory: one tensor plus a bounded write queue, not the checkpoint."""

from __future__ import annotations

import os
import re

import ml_dtypes
import numpy as np

from janusflow_jax import checkpoint, weights
from janusflow_jax.config import ConfigError, read_json
from janusflow_jax.model import LoadError, detect_family, hf_folder_parts
from janusflow_jax.safetensors_io import WeightFileError
from janusflow_jax.weight_files import open_weights
from janusflow_jax.weights import ConversionError

CONVERTER_VERSION = "2"

ConvertError = (ConfigError, WeightFileError, ConversionError, checkpoint.CheckpointError, LoadError, OSError)


def convert(
    model_dir: str,
    out_dir: str,
    *,
    vae_dir: str | None = None,
    dtype: str = "bfloat16",
    overwrite: bool = False,
    progress=None,
) -> str:
    """Convert and write atomically; returns `out_dir`. Raises one of `ConvertError` on bad input.

    `model_dir`: an official JanusFlow folder (+ diffusers VAE), a Janus folder (official or
    transformers layout), weights in any published format; or a janusflow-jax checkpoint (e.g. a
    `janusflow-train` export), whose parameters are re-saved in `dtype` with its configs and
    processor files."""
    if os.path.exists(out_dir) and not overwrite:
        raise checkpoint.CheckpointError(f"{out_dir} already exists (pass --overwrite to replace it)")
    if checkpoint.is_checkpoint(model_dir):
        if vae_dir is not None:
            raise checkpoint.CheckpointError(
                f"{model_dir} is a janusflow-jax checkpoint: it holds its VAE (drop --vae)"
            )
        return _recast(model_dir, out_dir, dtype, overwrite)
    if not os.path.isdir(model_dir):
        raise LoadError(f"{model_dir}: not a folder")
    family = detect_family(model_dir)
    if family == "janus":
        if vae_dir is not None:
            raise LoadError(f"{model_dir} is a Janus model: its VQ tokenizer is inside (drop --vae)")
        from janusflow_jax.janus.model import folder_parts

        cfg, parts = folder_parts(model_dir, dtype=dtype)
        folders = [(model_dir, "model")]
        meta = {"family": "janus", "config": cfg.to_official_json(), "gen_image_size": cfg.gen_image_size}
    else:
        vae_dir = vae_dir or os.path.join(model_dir, "vae")
        cfg, vae_cfg, parts = hf_folder_parts(model_dir, vae_dir, dtype=dtype)
        folders = [(model_dir, "model"), (vae_dir, "diffusion_pytorch_model")]
        meta = {"family": "janusflow", "config": cfg.official, "vae_config": vae_cfg.to_diffusers()}
    want = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    layout = {name: _check(source, targets, rules, ignored, want) for name, source, targets, rules, ignored in parts}
    sources = {}
    for folder, stem in folders:
        for path in open_weights(folder, stem).files + [os.path.join(folder, "config.json")]:
            sources[os.path.abspath(path)] = checkpoint.sha256_file(path)
    meta.update(
        converter_version=CONVERTER_VERSION,
        dtype=dtype,
        sources=sources,
        num_params=int(sum(p.size for t in layout.values() for p in checkpoint.dict_leaves(t))),
    )
    extra = {
        n: os.path.join(model_dir, n) for n in checkpoint.PROCESSOR_FILES if os.path.isfile(os.path.join(model_dir, n))
    }

    def fill(write):  # the one pass over the tensors: read, transform, cast, hand over, forget
        for name, source, targets, rules, ignored in parts:
            weights.convert_state_dict(
                source.keys(),
                source.read,
                targets,
                rules,
                ignored,
                dtype=want,
                source=source.path,
                on_tensor=progress,
                sink=lambda path, index, value, name=name: write((name, *path), index, value),
            )

    return checkpoint.save_streamed(out_dir, layout, fill, meta, extra_files=extra, overwrite=overwrite)


def _check(source, targets, rules, ignored, want: np.dtype) -> dict:
    """The strict mapping check of one tensor source, on zero-strided stand-ins of its tensors (the
    headers' shapes; nothing read), before anything is written; returns the output layout (nested
    dict of `checkpoint.Pending`; a leaf filled one `[layer]` at a time is `layered`)."""

    def dummy(k):
        dt = np.dtype(source.dtype(k))
        return np.broadcast_to(np.zeros((), want if dt.kind == "f" or dt == want else dt), source.shape(k))

    layered: dict[tuple, bool] = {}

    def probe(path, index, value):
        first = bool(index) and isinstance(index[0], (int, np.integer))
        layered[path] = layered.get(path, True) and first

    weights.convert_state_dict(
        source.keys(), dummy, targets, rules, ignored, dtype=want, source=source.path, sink=probe
    )
    return weights.unflatten_params(
        {p: checkpoint.Pending(shape, want, layered=layered.get(p, False)) for p, (shape, _) in targets.items()}
    )


def count_tensors(model_dir: str, vae_dir: str | None = None) -> int | None:
    """How many times `convert` will call `progress` on this folder: its tensors (and its VAE's),
    less the ignored ones (read from the file headers / pickle records only). None where it cannot
    tell: a janusflow-jax checkpoint (re-saved whole, no per-tensor progress) or a folder that
    `convert` will reject with its own error."""
    if checkpoint.is_checkpoint(model_dir):
        return None
    try:
        if detect_family(model_dir) == "janus":
            from janusflow_jax.janus import config as janus_config, weights as janus_weights

            d = read_json(os.path.join(model_dir, "config.json"))
            ignored = janus_weights.HF_IGNORED if janus_config.is_hf_janus_config(d) else janus_weights.OFFICIAL_IGNORED
            parts = [(model_dir, "model", ignored)]
        else:
            vae_dir = vae_dir or os.path.join(model_dir, "vae")
            parts = [
                (model_dir, "model", weights.JANUSFLOW_IGNORED),
                (vae_dir, "diffusion_pytorch_model", weights.VAE_IGNORED),
            ]
        total = 0
        for folder, stem, ignored in parts:
            skip = [re.compile(p) for p in ignored]
            keys = open_weights(folder, stem).keys()
            total += sum(1 for k in keys if not any(rx.fullmatch(k) for rx in skip))
    except (ConfigError, WeightFileError, OSError):
        return None
    return total


def _recast(src: str, out_dir: str, dtype: str, overwrite: bool) -> str:
    import ml_dtypes

    meta = checkpoint.read_metadata(src)
    want = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[dtype]
    tree = checkpoint.restore_params(src)
    cast = _map(lambda a: np.asarray(a).astype(want), tree)
    meta = dict(meta, dtype=dtype, converter_version=CONVERTER_VERSION, recast_from=os.path.abspath(src))
    extra = {n: os.path.join(src, n) for n in checkpoint.PROCESSOR_FILES if os.path.isfile(os.path.join(src, n))}
    return checkpoint.save_params(out_dir, cast, meta, extra_files=extra, overwrite=overwrite)


def _map(fn, tree):
    return {k: _map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


