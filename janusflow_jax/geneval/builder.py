"""TFDS builder `geneval` (ArrayRecord, no TensorFlow) of the synthetic GenEval world.

Configs (record fields as the `shapes` builder's, so `janusflow_jax.data.TrainLoader` reads them as is):

* `captions` — `image` (PNG bytes, `Tensor(shape=(), dtype=object)`), `caption`, `id`, plus `task` (the
  task kind) and `spec` (`Spec.key`) (Text; read back as bytes); default 4 repeats per training spec,
  raised per kind to at least `min_per_kind` records (default 64), each repeat its own seed (its own
  placement and unstated colours); repeat 0 canonical, later repeats a paraphrase with probability ½;
* `qa` — `image`, `question`, `answer`, `id`, `task`, `spec`, `question_kind`; one record per (image,
  question), default 1 repeat per training spec (again ≥ `min_per_kind` images per kind).

Splits: `train` (the training specs, seed `train_seed`) and `heldout` (the held-out specs, seed
`heldout_seed` ≠ `train_seed`, once each, canonical captions). See `janusflow_jax.geneval.world`. The
builder is the shapes builder's shared part (`janusflow_jax.shapes.builder.WorldBuilder`, `WorldConfig`)
given this world's records.

    from janusflow_jax.geneval import builder
    b = builder.build("datasets/", config="captions")           # or "qa"; repeats=…, min_per_kind=…
    src = b.as_data_source()["train"]                           # {"image": b"\\x89PNG…", "caption": b"a photo of …", …}
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import tensorflow_datasets as tfds

from janusflow_jax.geneval import world
from janusflow_jax.shapes.builder import (
    CONFIG_KINDS,
    DEFAULT_REPEATS,
    WorldBuilder,
    WorldConfig,
    build_world,
    open_builder,
    shared_settings,
    variant_name,
)
from janusflow_jax.shapes.world import encode_png

__all__ = [  # CONFIG_KINDS, DEFAULT_REPEATS: the shapes builder's, re-exported
    "CONFIG_KINDS",
    "DEFAULT_MIN_PER_KIND",
    "DEFAULT_REPEATS",
    "Geneval",
    "GenevalConfig",
    "build",
    "builder",
    "make_config",
]

DEFAULT_MIN_PER_KIND = 64


@dataclasses.dataclass(eq=False)
class GenevalConfig(WorldConfig):
    """The shared settings (`WorldConfig`) plus `min_per_kind`: training records (images) per task kind
    at least."""

    SETTINGS: ClassVar[tuple[str, ...]] = ("kind", "repeats", "min_per_kind", "train_seed", "heldout_seed",
                                           "paraphrase_prob")  # fmt: skip

    min_per_kind: int = DEFAULT_MIN_PER_KIND


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
    shared = shared_settings("geneval", kind, repeats, train_seed, heldout_seed, paraphrase_prob)
    if int(min_per_kind) < 0:
        raise ValueError(f"min_per_kind must be >= 0, got {min_per_kind}")
    m = f"_m{int(min_per_kind)}" if int(min_per_kind) != DEFAULT_MIN_PER_KIND else ""
    return GenevalConfig(
        name=variant_name(**shared, world_suffix=m),
        description=f"geneval world, {kind}, {shared['repeats']} repeat(s) (≥ {min_per_kind} per kind), "
        f"seeds {train_seed}/{heldout_seed}",
        min_per_kind=int(min_per_kind),
        **shared,
    )


class Geneval(WorldBuilder):
    """The GenEval world (janusflow_jax.geneval.world) as image–caption and image–QA datasets."""

    # 1.1.0: object centres on the 8-px grid (`world.GRID`); 1.2.0: position questions about every
    # two-object scene (`world.qa`); 1.3.0: `where` questions. Older folders are not read by this version
    # (tfds keeps versions apart).
    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES: ClassVar[dict] = {
        "1.0.0": "Initial release.",
        "1.1.0": "Object centres on the 8-px grid.",
        "1.2.0": "Position questions about every two-object scene, not only position prompts.",
        "1.3.0": "`where` questions (is the circle left or right of the square?) beside the yes/no ones.",
    }
    BUILDER_CONFIGS: ClassVar[list] = [make_config("captions"), make_config("qa")]
    DESCRIPTION = "Synthetic GenEval world: GenEval's six task kinds with flat shapes on 64×64 white."
    RECORD_FEATURES = ("task", "spec")
    QA_FEATURES = ("question_kind", "question", "answer")  # the items of `world.qa`'s tuples

    def _records(self, split: str, seed: int):
        cfg = self.builder_config
        for ex in world.examples(
            split, seed=seed, repeats=cfg.repeats, min_per_kind=cfg.min_per_kind, paraphrase_prob=cfg.paraphrase_prob
        ):
            yield ex.id, {"image": encode_png(ex.image()), "task": ex.spec.kind, "spec": ex.spec.key}, ex.caption, ex.qa

    def _heldout_metadata(self) -> dict[str, list[str]]:
        return {"heldout_specs": [s.key for s in world.specs("heldout")]}


def builder(data_dir: str, config: str | GenevalConfig = "captions", **kwargs) -> Geneval:
    """The (not necessarily built) `geneval` builder under `data_dir` (kwargs: see `make_config`)."""
    return open_builder(Geneval, make_config, data_dir, config, **kwargs)


def build(data_dir: str, config: str | GenevalConfig = "captions", **kwargs) -> Geneval:
    """Builds (once; reused if already prepared, unless `overwrite=True`) and returns the `geneval` dataset
    `data_dir/geneval/<config>/1.3.0/`; kwargs: `build`, `overwrite` (see `shapes.builder.build_world`) and
    the `make_config` settings (`repeats`, `min_per_kind`, `train_seed`, `heldout_seed`, `paraphrase_prob`)."""
    return build_world(builder, data_dir, config, **kwargs)
