"""TFDS builder `geneval` (ArrayRecord, no TensorFlow) of the synthetic GenEval world.

Configs (record fields as the `shapes` builder's, so `janusflow_jax.data.TrainLoader` reads them as is):

* `captions` — `image` (PNG bytes, `Tensor(shape=(), dtype=object)`), `caption`, `id`, plus `task` (the
  task kind) and `spec` (`Spec.key`) (Text; read back as bytes); default 4 repeats per training spec,
  raised per kind to at least `min_per_kind` records (default 64), each repeat its own seed (its own
  placement and unstated colours); repeat 0 canonical, later repeats a paraphrase with probability ½;
* `qa` — `image`, `question`, `answer`, `id`, `task`, `spec`, `question_kind`; one record per (image,
  question), default 1 repeat per training spec (again ≥ `min_per_kind` images per kind).

Splits: `train` (the training specs, seed `train_seed`) and `heldout` (the held-out specs, seed
`heldout_seed` ≠ `train_seed`, once each, canonical captions). See `janusflow_jax.geneval.world`.

    from janusflow_jax.geneval import builder
    b = builder.build("datasets/", config="captions")           # or "qa"; repeats=…, min_per_kind=…
    src = b.as_data_source()["train"]                           # {"image": b"\\x89PNG…", "caption": b"a photo of …", …}
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from janusflow_jax.data.builders import prepare_offline, quiet_tfds
from janusflow_jax.geneval import world
from janusflow_jax.shapes.world import encode_png

CONFIG_KINDS = ("captions", "qa")
DEFAULT_REPEATS = {"captions": 4, "qa": 1}
DEFAULT_MIN_PER_KIND = 64


@dataclasses.dataclass(eq=False)
class GenevalConfig(tfds.core.BuilderConfig):
    """`kind`: captions | qa; `repeats` of each training spec; `min_per_kind` training records (images)
    per task kind at least; the two split seeds; the paraphrase probability of repeats ≥ 1."""

    kind: str = "captions"
    repeats: int = 1
    min_per_kind: int = DEFAULT_MIN_PER_KIND
    train_seed: int = world.TRAIN_SEED
    heldout_seed: int = world.HELDOUT_SEED
    paraphrase_prob: float = 0.5


def make_config(
    kind: str = "captions",
    *,
    repeats: int | str | None = None,
    min_per_kind: int = DEFAULT_MIN_PER_KIND,
    train_seed: int = world.TRAIN_SEED,
    heldout_seed: int = world.HELDOUT_SEED,
    paraphrase_prob: float = 0.5,
) -> GenevalConfig:
    """A config; its name is `kind` for the defaults, else `kind` plus the non-default settings
    (so each variant is built into its own folder)."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown geneval config {kind!r}; one of {CONFIG_KINDS}")
    repeats = DEFAULT_REPEATS[kind] if repeats in (None, "") else int(repeats)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if int(min_per_kind) < 0:
        raise ValueError(f"min_per_kind must be >= 0, got {min_per_kind}")
    if int(train_seed) == int(heldout_seed):
        raise ValueError("the held-out split needs a seed the training split does not use")
    name = kind
    if repeats != DEFAULT_REPEATS[kind]:
        name += f"_r{repeats}"
    if int(min_per_kind) != DEFAULT_MIN_PER_KIND:
        name += f"_m{int(min_per_kind)}"
    if (int(train_seed), int(heldout_seed)) != (world.TRAIN_SEED, world.HELDOUT_SEED):
        name += f"_s{int(train_seed)}_h{int(heldout_seed)}"
    if paraphrase_prob != 0.5:
        name += f"_p{round(paraphrase_prob * 1000)}"
    return GenevalConfig(
        name=name,
        description=f"geneval world, {kind}, {repeats} repeat(s) (≥ {min_per_kind} per kind), "
        f"seeds {train_seed}/{heldout_seed}",
        kind=kind,
        repeats=repeats,
        min_per_kind=int(min_per_kind),
        train_seed=int(train_seed),
        heldout_seed=int(heldout_seed),
        paraphrase_prob=float(paraphrase_prob),
    )


class Geneval(tfds.core.GeneratorBasedBuilder):
    """The GenEval world (janusflow_jax.geneval.world) as image–caption and image–QA datasets."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: ClassVar[list] = [make_config("captions"), make_config("qa")]
    DEFAULT_CONFIG_NAME = "captions"
    url_infos = None  # nothing is downloaded (see the shapes builder)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        text = tfds.features.Text
        feats = {"image": tfds.features.Tensor(shape=(), dtype=np.object_), "id": text()}
        feats.update(task=text(), spec=text())
        if cfg.kind == "captions":
            feats["caption"] = text()
        else:
            feats.update(question=text(), answer=text(), question_kind=text())
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic GenEval world: GenEval's six task kinds with flat shapes on 64×64 white.",
            features=tfds.features.FeaturesDict(feats),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        self.info.metadata.update(
            kind=cfg.kind,
            repeats=cfg.repeats,
            min_per_kind=cfg.min_per_kind,
            train_seed=cfg.train_seed,
            heldout_seed=cfg.heldout_seed,
            paraphrase_prob=cfg.paraphrase_prob,
            heldout_specs=[s.key for s in world.specs("heldout")],
        )
        return {split: self._generate_examples(split) for split in world.SPLITS}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        for ex in world.examples(
            split,
            seed=cfg.train_seed if split == "train" else cfg.heldout_seed,
            repeats=cfg.repeats,
            min_per_kind=cfg.min_per_kind,
            paraphrase_prob=cfg.paraphrase_prob,
        ):
            common = {"image": encode_png(ex.image()), "task": ex.spec.kind, "spec": ex.spec.key}
            if cfg.kind == "captions":
                yield ex.id, {**common, "id": ex.id, "caption": ex.caption}
            else:
                for i, (qk, q, a) in enumerate(ex.qa):
                    rid = f"{ex.id}/q{i}"
                    yield rid, {**common, "id": rid, "question": q, "answer": a, "question_kind": qk}


def builder(data_dir: str, config: str | GenevalConfig = "captions", **kwargs) -> Geneval:
    """The (not necessarily built) `geneval` builder under `data_dir` (kwargs: see `make_config`)."""
    cfg = config if isinstance(config, GenevalConfig) else make_config(config, **kwargs)
    if cfg.name in CONFIG_KINDS:
        cfg = cfg.name  # the registered config object
    with quiet_tfds():
        return Geneval(data_dir=os.fspath(data_dir), config=cfg, file_format="array_record")


def build(
    data_dir: str,
    config: str | GenevalConfig = "captions",
    *,
    build: bool = True,
    overwrite: bool = False,
    **kwargs,
) -> Geneval:
    """Builds (once; reused if already prepared, unless `overwrite`) and returns the `geneval` dataset
    `data_dir/geneval/<config>/1.0.0/`. `config`: "captions" | "qa" | a `GenevalConfig`; kwargs
    (`repeats`, `min_per_kind`, `train_seed`, `heldout_seed`, `paraphrase_prob`) select a variant.
    With `build=False` the builder is returned as is (for processes that only read)."""
    b = builder(data_dir, config, **kwargs)
    if not build:
        return b
    prepare_offline(b, overwrite=overwrite)
    return b
