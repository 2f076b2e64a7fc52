"""The synthetic GenEval world: GenEval's six task kinds in miniature (flat shapes on 64×64 white).

* `world` — specs (`Spec`, `Obj`), exact rendering (`render`, `layout`, `draw`), captions with
  paraphrases, questions with answers, the train / held-out split (`specs`, `is_heldout`, `PAIRS`), the
  fixed evaluation list (`EVAL_SPECS`) and the training records (`examples`);
* `judge` — the exact pixel judge (`detect`, `check`, `judge.judge`, `score`; the function `judge` is
  not re-exported here, so `janusflow_jax.geneval.judge` stays the module);
* `builder` — the TFDS ArrayRecord builder `geneval` (configs `captions`, `qa`; splits `train`,
  `heldout`; the training data source `geneval`); imports tensorflow_datasets, so it is not imported here;
* `tokenizer` — the world's processor files (`train_tokenizer`, written to `train/configs/geneval/processor`).
"""

from janusflow_jax.geneval.judge import Detection, check, detect, score
from janusflow_jax.geneval.world import (
    COLOUR_NAMES,
    COUNTS,
    EVAL_SPECS,
    HELDOUT_SEED,
    KINDS,
    PAIRS,
    QUESTION_KINDS,
    RELATIONS,
    SHAPES,
    TRAIN_SEED,
    Obj,
    Placement,
    Spec,
    all_specs,
    caption,
    captions,
    draw,
    examples,
    is_heldout,
    layout,
    qa,
    render,
    specs,
)

__all__ = [
    "COLOUR_NAMES",
    "COUNTS",
    "EVAL_SPECS",
    "HELDOUT_SEED",
    "KINDS",
    "PAIRS",
    "QUESTION_KINDS",
    "RELATIONS",
    "SHAPES",
    "TRAIN_SEED",
    "Detection",
    "Obj",
    "Placement",
    "Spec",
    "all_specs",
    "caption",
    "captions",
    "check",
    "detect",
    "draw",
    "examples",
    "is_heldout",
    "layout",
    "qa",
    "render",
    "score",
    "specs",
]
