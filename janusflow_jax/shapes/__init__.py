"""The synthetic shapes world used to train the tiny JanusFlow shipped with the package.

* `world` — attributes, exact rendering, captions / paraphrases / QA, train / held-out split, and
  source writers for the generic builders (`write_sources`, `write_all_sources`);
* `judge` — pixel-based attribute recognition (`judge`, `score`, `accuracy`);
* `builder` — the TFDS ArrayRecord builder `shapes` (configs `captions`, `qa`; splits `train`,
  `heldout`); imports tensorflow_datasets, so it is not imported here;
* `tokenizer` — a small byte-level BPE tokenizer + processor files (`train_tokenizer`).
"""

from janusflow_jax.shapes.judge import accuracy, analyse, judge, score
from janusflow_jax.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    FIELDS,
    HELDOUT_SEED,
    POSITIONS,
    QUESTIONS,
    SHAPES,
    SIZES,
    TRAIN_SEED,
    VALUES,
    Attributes,
    all_combinations,
    examples,
    render,
    split_combinations,
    write_all_sources,
    write_sources,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "FIELDS",
    "HELDOUT_SEED",
    "POSITIONS",
    "QUESTIONS",
    "SHAPES",
    "SIZES",
    "TRAIN_SEED",
    "VALUES",
    "Attributes",
    "accuracy",
    "all_combinations",
    "analyse",
    "examples",
    "judge",
    "render",
    "score",
    "split_combinations",
    "write_all_sources",
    "write_sources",
]
