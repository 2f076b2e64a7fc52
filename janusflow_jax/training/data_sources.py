"""From the `data:` section of a train config to a `TrainLoader`: build (once, on process 0) the TFDS
ArrayRecord datasets of each source, then read their splits with Grain."""

from __future__ import annotations

import os
from typing import Callable

from janusflow_jax.data import DataError, MixSpec, TrainLoader

# data.<role>.kind → what data.<role>.path names. The first three are the local builders of
# janusflow_jax.data.builders.BUILDERS (tests/test_data.py checks they agree), built into ArrayRecord
# under data.data_dir; the last three are read by `_source` itself.
SOURCE_KINDS = {
    "image_caption": "a folder of images + captions.jsonl / captions.tsv",
    "image_qa": "a JSONL file of {image, question, answer}",
    "text": "a .txt file (one document per line) or .jsonl of {text}",
    "shapes": "the synthetic shapes world (janusflow_jax.shapes); path unused",
    "geneval": "the synthetic GenEval world (janusflow_jax.geneval); path unused",
    "tfds": "an already prepared TFDS dataset folder (…/<name>/<version>/)",
}
WORLD_KINDS = ("shapes", "geneval")  # rendered worlds: data.<role>.repeats picks renders per training spec


def _source(src_cfg, role: str, data_dir: str, build: bool):
    import tensorflow_datasets as tfds

    from janusflow_jax.data import builders

    kind = src_cfg.kind
    if kind not in SOURCE_KINDS:
        raise DataError(f"data.{role}.kind: unknown kind {kind!r}; one of {sorted(SOURCE_KINDS)}")
    if kind == "tfds":
        if not os.path.isdir(src_cfg.path):
            raise DataError(f"data.{role}.path: {src_cfg.path} is not a prepared TFDS dataset folder")
        b = tfds.builder_from_directory(src_cfg.path)
    elif kind in WORLD_KINDS:
        if kind == "shapes":
            from janusflow_jax.shapes import builder as world_builder
        else:
            from janusflow_jax.geneval import builder as world_builder
        b = world_builder.build(data_dir, config="captions" if role == "gen" else "qa", build=build,
                                repeats=src_cfg.repeats or None)  # fmt: skip
    else:
        if build:
            b = builders.build(kind, src_cfg.path, data_dir)
        else:
            b = builders.builder(kind, src_cfg.path, data_dir)
    splits = b.as_data_source()
    if src_cfg.split not in splits:
        raise DataError(f"data.{role}.split: {src_cfg.split!r} not in {sorted(splits)} of {src_cfg.path or kind}")
    return splits[src_cfg.split]


def make_loader(
    d,
    *,
    processor,
    gen_image_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    log: Callable[[str], None] = print,
) -> TrainLoader:
    """Build the datasets (process 0 first; the others wait and reuse them) and the loader."""
    roles = [r for r in ("gen", "und", "text") if getattr(d.mix, r) > 0]
    sources = {}
    if process_count > 1:
        from jax.experimental import multihost_utils

        if process_index == 0:
            for r in roles:
                _source(getattr(d, r), r, d.data_dir, build=True)
        multihost_utils.sync_global_devices("janusflow-train: datasets built")
    for r in roles:
        sources[r] = _source(getattr(d, r), r, d.data_dir, build=process_index == 0 or process_count == 1)
        log(f"data.{r}: {len(sources[r])} records ({getattr(d, r).kind} {getattr(d, r).path})")
    return TrainLoader(
        processor=processor,
        gen_source=sources.get("gen"),
        und_source=sources.get("und"),
        text_source=sources.get("text"),
        mix=MixSpec(gen=d.mix.gen, und=d.mix.und, text=d.mix.text),
        gen_image_size=gen_image_size,
        gen_prompt_len=d.gen_prompt_len,
        und_len=d.und_len,
        text_len=d.text_len,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        num_threads=d.num_threads,
    )
