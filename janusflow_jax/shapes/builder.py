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

The world-independent part (`WorldConfig`, `WorldBuilder`, `shared_settings`, `variant_name`, `open_builder`,
`build_world`) is shared with the GenEval world's builder (`janusflow_jax.geneval.builder`).

    from janusflow_jax.shapes import builder
    b = builder.build("datasets/", config="captions")          # or "qa"; repeats=…, jitter=…
    src = b.as_data_source()["train"]                           # {"image": b"\\x89PNG…", "caption": b"a …", …}
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from janusflow_jax.data.builders import prepare_offline, quiet_tfds
from janusflow_jax.shapes import world

CONFIG_KINDS = ("captions", "qa")
DEFAULT_REPEATS = {"captions": 4, "qa": 1}


# --- what every world builder shares --------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class WorldConfig(tfds.core.BuilderConfig):
    """`kind`: captions | qa; `repeats` of each training item; the two split seeds; the paraphrase
    probability of repeats ≥ 1. A world's config adds its own settings and lists them all, in the order
    of the dataset metadata, in `SETTINGS`."""

    SETTINGS: ClassVar[tuple[str, ...]] = ("kind", "repeats", "train_seed", "heldout_seed", "paraphrase_prob")

    kind: str = "captions"
    repeats: int = 1
    train_seed: int = world.TRAIN_SEED
    heldout_seed: int = world.HELDOUT_SEED
    paraphrase_prob: float = 0.5

    def settings(self) -> dict:
        """{setting: value} in `SETTINGS` order (the dataset metadata)."""
        return {k: getattr(self, k) for k in self.SETTINGS}


def shared_settings(
    world_name: str, kind: str, repeats: int | str | None, train_seed: int, heldout_seed: int, paraphrase_prob: float
) -> dict:
    """The `WorldConfig` fields of a `world_name` config, checked and normalised (`repeats`:
    `DEFAULT_REPEATS[kind]` when None or "")."""
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown {world_name} config {kind!r}; one of {CONFIG_KINDS}")
    repeats = DEFAULT_REPEATS[kind] if repeats in (None, "") else int(repeats)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if int(train_seed) == int(heldout_seed):
        raise ValueError("the held-out split needs a seed the training split does not use")
    return dict(
        kind=kind,
        repeats=repeats,
        train_seed=int(train_seed),
        heldout_seed=int(heldout_seed),
        paraphrase_prob=float(paraphrase_prob),
    )


def variant_name(
    kind: str, repeats: int, train_seed: int, heldout_seed: int, paraphrase_prob: float, *, world_suffix: str = ""
) -> str:
    """A config's name: `kind` for the defaults, else `kind` plus the non-default settings — repeats,
    then `world_suffix` (a world's own settings), seeds, paraphrase probability."""
    name = kind
    if repeats != DEFAULT_REPEATS[kind]:
        name += f"_r{repeats}"
    name += world_suffix
    if (int(train_seed), int(heldout_seed)) != (world.TRAIN_SEED, world.HELDOUT_SEED):
        name += f"_s{int(train_seed)}_h{int(heldout_seed)}"
    if paraphrase_prob != 0.5:
        name += f"_p{round(paraphrase_prob * 1000)}"
    return name


class WorldBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A world as image–caption (`captions`) and image–QA (`qa`) datasets, version 1.0.0.

    Records: `image` (PNG bytes), `id`, the world's `RECORD_FEATURES`, and `caption` (captions) or the
    `QA_FEATURES` (qa: one record per item of an example's QA tuples, named in tuple order, id
    `<example id>/q<i>`); all but `image` are Text. A world's builder sets `BUILDER_CONFIGS`,
    `DESCRIPTION` and the feature names, and implements `_records` and `_heldout_metadata`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Initial release."}
    DEFAULT_CONFIG_NAME = "captions"
    # Nothing is downloaded: no URL checksums to look up (that lookup would import importlib_resources).
    url_infos = None
    DESCRIPTION: ClassVar[str]
    RECORD_FEATURES: ClassVar[tuple[str, ...]]
    QA_FEATURES: ClassVar[tuple[str, ...]] = ("question", "answer")

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text
        per_kind = ("caption",) if self.builder_config.kind == "captions" else self.QA_FEATURES
        feats = {"image": tfds.features.Tensor(shape=(), dtype=np.object_), "id": text()}
        feats.update({f: text() for f in (*self.RECORD_FEATURES, *per_kind)})
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(feats),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        self.info.metadata.update({**self.builder_config.settings(), **self._heldout_metadata()})
        return {split: self._generate_examples(split) for split in world.SPLITS}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        for rid, fields, caption, qa in self._records(split, cfg.train_seed if split == "train" else cfg.heldout_seed):
            if cfg.kind == "captions":
                yield rid, {**fields, "id": rid, "caption": caption}
            else:
                for i, item in enumerate(qa):
                    qid = f"{rid}/q{i}"
                    yield qid, {**fields, "id": qid, **dict(zip(self.QA_FEATURES, item, strict=True))}

    @abc.abstractmethod
    def _records(self, split: str, seed: int) -> Iterator[tuple[str, dict, str, Sequence[tuple[str, ...]]]]:
        """(example id, {"image": PNG bytes, <RECORD_FEATURES>}, caption, QA tuples) of each example of a
        split, in record order."""

    @abc.abstractmethod
    def _heldout_metadata(self) -> dict[str, list[str]]:
        """{metadata key: the keys of the held-out split's items}."""


def open_builder(cls: type[WorldBuilder], make_config: Callable[..., WorldConfig], data_dir: str, config, **kwargs):
    """The (not necessarily built) `cls` builder under `data_dir`; `config`: a kind ("captions" | "qa") or a
    config (kwargs: see `make_config`)."""
    config_cls = type(cls.BUILDER_CONFIGS[0])  # the world's config class
    cfg = config if isinstance(config, config_cls) else make_config(config, **kwargs)
    if cfg.name in CONFIG_KINDS:
        cfg = cfg.name  # the registered config object
    with quiet_tfds():
        return cls(data_dir=os.fspath(data_dir), config=cfg, file_format="array_record")


def build_world(
    open_fn: Callable[..., WorldBuilder],
    data_dir: str,
    config,
    *,
    build: bool = True,
    overwrite: bool = False,
    **kwargs,
) -> WorldBuilder:
    """`open_fn(data_dir, config, **kwargs)` (a world's `builder`), its dataset built first (once; reused if
    already prepared, unless `overwrite`); with `build=False` returned as is (for processes that only read)."""
    b = open_fn(data_dir, config, **kwargs)
    if build:
        prepare_offline(b, overwrite=overwrite)
    return b


# --- the shapes world -----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class ShapesConfig(WorldConfig):
    """The shared settings (`WorldConfig`) plus ±1 px centre `jitter` (off: exact rendering)."""

    SETTINGS: ClassVar[tuple[str, ...]] = (*WorldConfig.SETTINGS, "jitter")

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
    shared = shared_settings("shapes", kind, repeats, train_seed, heldout_seed, paraphrase_prob)
    return ShapesConfig(
        name=variant_name(**shared) + ("_jitter" if jitter else ""),
        description=f"shapes world, {kind}, {shared['repeats']} repeat(s), seeds {train_seed}/{heldout_seed}, "
        f"jitter {jitter}",
        jitter=bool(jitter),
        **shared,
    )


class Shapes(WorldBuilder):
    """The shapes world (janusflow_jax.shapes.world) as image–caption and image–QA datasets."""

    BUILDER_CONFIGS: ClassVar[list] = [make_config("captions"), make_config("qa")]
    DESCRIPTION = "Synthetic shapes world: one flat shape on a plain 64×64 background."
    RECORD_FEATURES = world.FIELDS

    def _records(self, split: str, seed: int):
        cfg = self.builder_config
        repeats = cfg.repeats if split == "train" else 1
        pngs: dict[str, bytes] = {}  # exact images repeat: encode each once
        for ex in world.examples(
            split, seed=seed, repeats=repeats, paraphrase_prob=cfg.paraphrase_prob, jitter=cfg.jitter
        ):
            if ex.image_name not in pngs:
                pngs[ex.image_name] = world.encode_png(ex.image())
            yield ex.id, {"image": pngs[ex.image_name], **ex.attrs.as_dict()}, ex.caption, ex.qa

    def _heldout_metadata(self) -> dict[str, list[str]]:
        return {"heldout_combinations": [a.key for a in world.split_combinations()[1]]}


def builder(data_dir: str, config: str | ShapesConfig = "captions", **kwargs) -> Shapes:
    """The (not necessarily built) `shapes` builder under `data_dir` (kwargs: see `make_config`)."""
    return open_builder(Shapes, make_config, data_dir, config, **kwargs)


def build(data_dir: str, config: str | ShapesConfig = "captions", **kwargs) -> Shapes:
    """Builds (once; reused if already prepared, unless `overwrite=True`) and returns the `shapes` dataset
    `data_dir/shapes/<config>/1.0.0/`. `config`: "captions" | "qa" | a `ShapesConfig`; kwargs: `build`,
    `overwrite` (see `build_world`) and the `make_config` settings (`repeats`, `train_seed`,
    `heldout_seed`, `paraphrase_prob`, `jitter`) that select a variant."""
    return build_world(builder, data_dir, config, **kwargs)
