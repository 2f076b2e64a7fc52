"""TFDS builder `shapes` (ArrayRecord, no TensorFlow) of the synthetic shapes world.

Configs:

* `captions` — features `image` (PNG bytes, `Tensor(shape=(), dtype=object)`), `caption`, `id`, and the
  attributes `shape`, `colour`, `size`, `position`, `background` (Text; read back as bytes);
  default 4 repeats per training combination (repeat 0 canonical, later repeats a paraphrase with
  probability ½ — see `world.examples`);
* `qa` — `image`, `question`, `answer`, `id` and the attributes; one record per (image, question),
  default 1 repeat (5 records per training combination).

Splits: `train` (the training combinations, seed `train_seed`, `repeats` repeats) and `heldout`
(the held-out combinations, seed `heldout_seed` ≠ `train_seed`, one repeat, canonical captions).
Images are rendered exactly (no jitter) unless the config asks for it.

    from janusflow_jax.shapes import builder
    b = builder.build("datasets/", config="captions")          # or "qa"; repeats=…, jitter=…
    src = b.as_data_source()["train"]                           # {"image": b"\\x89PNG…", "caption": b"a …", …}
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from janusflow_jax.data.builders import prepare_offline, quiet_tfds
from janusflow_jax.shapes import world

CONFIG_KINDS = ("captions", "qa")
DEFAULT_REPEATS = {"captions": 4, "qa": 1}


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """`kind`: captions | qa; `repeats` of each training combination; the two split seeds; the
    paraphrase probability of repeats ≥ 1; ±1 px centre jitter (off: exact rendering)."""

    kind: str = "captions"
    repeats: int = 1
    train_seed: int = world.TRAIN_SEED
    heldout_seed: int = world.HELDOUT_SEED
    paraphrase_prob: float = 0.5
    jitter: bool = False


def make_config(
    kind: str = "captions",
    *,
    repeats: int | str | None = None,
    train_seed: int = world.TRAIN_SEED,
    heldout_seed: int = world.HELDOUT_SEED,
    paraphrase_prob: float = 0.5,
    jitter: bool = False,
) -> ShapesConfig:
    """A config; its name is `kind` for the defaults, else `kind` plus the non-default settings
    (so each variant is built into its own folder)."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown shapes config {kind!r}; one of {CONFIG_KINDS}")
    repeats = DEFAULT_REPEATS[kind] if repeats in (None, "") else int(repeats)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if int(train_seed) == int(heldout_seed):
        raise ValueError("the held-out split needs a seed the training split does not use")
    name = kind
    if repeats != DEFAULT_REPEATS[kind]:
        name += f"_r{repeats}"
    if (int(train_seed), int(heldout_seed)) != (world.TRAIN_SEED, world.HELDOUT_SEED):
        name += f"_s{int(train_seed)}_h{int(heldout_seed)}"
    if paraphrase_prob != 0.5:
        name += f"_p{round(paraphrase_prob * 1000)}"
    if jitter:
        name += "_jitter"
    return ShapesConfig(
        name=name,
        description=f"shapes world, {kind}, {repeats} repeat(s), seeds {train_seed}/{heldout_seed}, jitter {jitter}",
        kind=kind,
        repeats=repeats,
        train_seed=int(train_seed),
        heldout_seed=int(heldout_seed),
        paraphrase_prob=float(paraphrase_prob),
        jitter=bool(jitter),
    )


class Shapes(tfds.core.GeneratorBasedBuilder):
    """The shapes world (janusflow_jax.shapes.world) as image–caption and image–QA datasets."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: ClassVar[list] = [make_config("captions"), make_config("qa")]
    DEFAULT_CONFIG_NAME = "captions"
    # Nothing is downloaded: no URL checksums to look up (that lookup would import importlib_resources).
    url_infos = None

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        text = tfds.features.Text
        feats = {"image": tfds.features.Tensor(shape=(), dtype=np.object_), "id": text()}
        if cfg.kind == "captions":
            feats["caption"] = text()
        else:
            feats["question"] = text()
            feats["answer"] = text()
        feats.update({f: text() for f in world.FIELDS})
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic shapes world: one flat shape on a plain 64×64 background.",
            features=tfds.features.FeaturesDict(feats),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        _, heldout = world.split_combinations()
        self.info.metadata.update(
            kind=cfg.kind,
            repeats=cfg.repeats,
            train_seed=cfg.train_seed,
            heldout_seed=cfg.heldout_seed,
            paraphrase_prob=cfg.paraphrase_prob,
            jitter=cfg.jitter,
            heldout_combinations=[a.key for a in heldout],
        )
        return {split: self._generate_examples(split) for split in world.SPLITS}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        seed = cfg.train_seed if split == "train" else cfg.heldout_seed
        repeats = cfg.repeats if split == "train" else 1
        pngs: dict[str, bytes] = {}
        for ex in world.examples(
            split, seed=seed, repeats=repeats, paraphrase_prob=cfg.paraphrase_prob, jitter=cfg.jitter
        ):
            if ex.image_name not in pngs:
                pngs[ex.image_name] = world.encode_png(ex.image())
            common = {"image": pngs[ex.image_name], **ex.attrs.as_dict()}
            if cfg.kind == "captions":
                yield ex.id, {**common, "id": ex.id, "caption": ex.caption}
            else:
                for i, (q, a) in enumerate(ex.qa):
                    rid = f"{ex.id}/q{i}"
                    yield rid, {**common, "id": rid, "question": q, "answer": a}


def builder(data_dir: str, config: str | ShapesConfig = "captions", **kwargs) -> Shapes:
    """The (not necessarily built) `shapes` builder under `data_dir` (kwargs: see `make_config`)."""
    cfg = config if isinstance(config, ShapesConfig) else make_config(config, **kwargs)
    if cfg.name in CONFIG_KINDS:
        cfg = cfg.name  # the registered config object
    with quiet_tfds():
        return Shapes(data_dir=os.fspath(data_dir), config=cfg, file_format="array_record")


def build(
    data_dir: str,
    config: str | ShapesConfig = "captions",
    *,
    build: bool = True,
    overwrite: bool = False,
    **kwargs,
) -> Shapes:
    """Builds (once; reused if already prepared, unless `overwrite`) and returns the `shapes` dataset
    `data_dir/shapes/<config>/1.0.0/`. `config`: "captions" | "qa" | a `ShapesConfig`; kwargs
    (`repeats`, `train_seed`, `heldout_seed`, `paraphrase_prob`, `jitter`) select a variant.
    With `build=False` the builder is returned as is (for processes that only read)."""
    b = builder(data_dir, config, **kwargs)
    if not build:
        return b
    prepare_offline(b, overwrite=overwrite)
    return b
