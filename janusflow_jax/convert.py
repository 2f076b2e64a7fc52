"""Conversion of an official JanusFlow folder (+ diffusers VAE) into a janusflow-jax checkpoint, or of
a janusflow-jax checkpoint into another stored dtype."""

from __future__ import annotations

import os

import numpy as np

from janusflow_jax import checkpoint
from janusflow_jax.config import ConfigError
from janusflow_jax.model import LoadError, find_weights, read_hf_folder
from janusflow_jax.safetensors_io import WeightFileError
from janusflow_jax.weights import ConversionError

CONVERTER_VERSION = "1"

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

    `model_dir` may also be a janusflow-jax checkpoint (e.g. a `janusflow-train` export): its
    parameters are re-saved in `dtype`, with its configs and processor files."""
    if os.path.exists(out_dir) and not overwrite:
        raise checkpoint.CheckpointError(f"{out_dir} already exists (pass --overwrite to replace it)")
    if checkpoint.is_checkpoint(model_dir):
        if vae_dir is not None:
            raise checkpoint.CheckpointError(
                f"{model_dir} is a janusflow-jax checkpoint: it holds its VAE (drop --vae)"
            )
        return _recast(model_dir, out_dir, dtype, overwrite)
    vae_dir = vae_dir or os.path.join(model_dir, "vae")
    cfg, vae_cfg, jf, vae = read_hf_folder(model_dir, vae_dir, dtype=dtype, progress=progress)
    sources = {}
    for folder, stem in ((model_dir, "model"), (vae_dir, "diffusion_pytorch_model")):
        path = find_weights(folder, stem)
        sources[os.path.abspath(path)] = checkpoint.sha256_file(path)
    for name in ("config.json",):
        for folder in (model_dir, vae_dir):
            p = os.path.join(folder, name)
            sources[os.path.abspath(p)] = checkpoint.sha256_file(p)
    meta = {
        "converter_version": CONVERTER_VERSION,
        "config": cfg.official,
        "vae_config": vae_cfg.to_diffusers(),
        "dtype": dtype,
        "sources": sources,
        "num_params": int(sum(np.prod(a.shape) for a in _leaves(jf)) + sum(np.prod(a.shape) for a in _leaves(vae))),
    }
    extra = {
        n: os.path.join(model_dir, n) for n in checkpoint.PROCESSOR_FILES if os.path.isfile(os.path.join(model_dir, n))
    }
    return checkpoint.save_params(out_dir, {"janusflow": jf, "vae": vae}, meta, extra_files=extra, overwrite=overwrite)


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


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree
