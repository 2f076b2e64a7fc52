"""Held-out evaluation on the GenEval world, for either family (what `janusflow-eval geneval` runs).

Generation, GenEval's protocol made exact: every evaluation prompt (`prompt_specs`: each held-out spec
of every kind, and single_object's five specs, which hold nothing out) is drawn `images_per_prompt`
times from its canonical caption; an image is right when the pixel judge finds every stated constraint
satisfied (`judge.check`, strict: nothing else drawn). The score of a kind is the fraction of its images
judged right; `overall` is the mean over the kinds (GenEval's summary).

Understanding: each evaluation spec rendered exactly with its held-out record seed (the seed
`world.examples("heldout")` gives it), every question of `world.qa` about that image asked; an answer
is right when, lower-cased and stripped of surrounding whitespace and final punctuation, it equals the
expected one. Accuracy per question kind (`world.QUESTION_KINDS`). The same on training
renders (`understanding_specs("train")`, `split="train"`) measures how much of it is memorised.

The model is anything with the library's `generate_images(prompts, seed=…, batch_size=…, **sampler)`
and `answer(images, questions, max_new_tokens=…)`: both families' loaded models.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from janusflow_jax.geneval import judge as judge_lib
from janusflow_jax.geneval import world
from janusflow_jax.shapes.evaluate import normalise_answer  # one answer normalisation for both worlds

PASS_RGB = (0, 170, 0)  # the grid's frame around an image judged right
FAIL_RGB = (220, 0, 0)  # … and judged wrong
FRAME = 2  # pixels


def _spread(pool: list, n: int | None) -> list:
    if n is not None and n <= 0:
        raise ValueError(f"per_kind must be positive, got {n}")
    if n is None or n >= len(pool):
        return pool
    return [pool[round(i * (len(pool) - 1) / max(n - 1, 1))] for i in range(n)]


def prompt_specs(per_kind: int | None = None) -> list[world.Spec]:
    """The evaluation prompts, kind by kind in `world.KINDS` order: every held-out spec (single_object:
    its training specs), or `per_kind` of them evenly spread along each kind's list."""
    return [s for k in world.KINDS for s in _spread(world.specs("heldout", k) or world.specs("train", k), per_kind)]


def spread_specs(per_kind: int | None = None) -> list[world.Spec]:
    """Every spec of the world (train and held-out), or `per_kind` per kind evenly spread."""
    return [s for k in world.KINDS for s in _spread(world.all_specs(k), per_kind)]


def heldout_seed(spec: world.Spec) -> int:
    """The record seed of `spec`'s held-out rendering (`world.examples("heldout")`'s, for any spec)."""
    return world.record_seed(world.HELDOUT_SEED, "heldout", spec, 0)


def train_seed(spec: world.Spec) -> int:
    """The record seed of a training spec's first rendering (repeat 0: in the training QA records at
    every `repeats` setting)."""
    return world.record_seed(world.TRAIN_SEED, "train", spec, 0)


def understanding_specs(split: str = "heldout", per_kind: int | None = None) -> list[world.Spec]:
    """The specs whose renders the understanding evaluation asks about: `heldout`, the evaluation prompts
    (`prompt_specs`); `train`, as many training specs per kind (`per_kind` at most), evenly spread —
    the same questions on images the model was trained on, so the gap between the two shows what was
    memorised rather than learned."""
    held = prompt_specs(per_kind)
    if split == "heldout":
        return held
    if split != "train":
        raise ValueError(f"split {split!r} is not one of {world.SPLITS}")
    return [s for k in world.KINDS for s in _spread(world.specs("train", k), sum(h.kind == k for h in held))]


@dataclasses.dataclass
class GenerationReport:
    scores: dict[str, float]  # per kind + "overall"
    specs: list[world.Spec]  # one per image (prompt-major: images_per_prompt consecutive)
    images: np.ndarray  # uint8 [N, 64, 64, 3]
    checks: list[dict[str, bool]]  # judge.check per image ("all": right)
    seconds: float
    images_per_prompt: int
    run_seconds: float | None = None  # the compiled programs' run time (compiles excluded), when the model times them
    lenient: dict[str, float] = dataclasses.field(default_factory=dict)  # the scores under GenEval's own rule

    @property
    def verdicts(self) -> list[bool]:
        return [c["all"] for c in self.checks]


@dataclasses.dataclass
class UnderstandingReport:
    accuracy: dict[str, float]  # per question kind + "all"
    rows: list[tuple[str, str, str, str]]  # (question kind, question, expected, answer)
    seconds: float


def summarise(specs: Sequence[world.Spec], verdicts: Sequence[bool]) -> dict[str, float]:
    """GenEval's summary of per-image verdicts: per kind (kinds present only) and `overall`."""
    right: dict[str, list[bool]] = {}
    for s, v in zip(specs, verdicts, strict=True):
        right.setdefault(s.kind, []).append(bool(v))
    out = {k: float(np.mean(right[k])) for k in world.KINDS if k in right}
    out["overall"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def evaluate_generation(
    model, specs: Sequence[world.Spec], *, images_per_prompt: int = 1, seed: int = 0, batch_size=None, **sampler
) -> GenerationReport:
    """Draw every prompt `images_per_prompt` times (image i from the model's seed rule at `seed`) and judge."""
    if images_per_prompt <= 0:
        raise ValueError(f"images_per_prompt must be positive, got {images_per_prompt}")
    per_image = [s for s in specs for _ in range(images_per_prompt)]
    prompts = [world.caption(s, 0) for s in per_image]
    run_before = _run_seconds(model)
    t = time.perf_counter()
    images = np.asarray(model.generate_images(prompts, seed=seed, batch_size=batch_size, **sampler))
    seconds = time.perf_counter() - t
    run = None if run_before is None else _run_seconds(model) - run_before
    found = [judge_lib.detect(img) for img in images]
    checks = [judge_lib.check(s, f) for s, f in zip(per_image, found, strict=True)]
    rep = GenerationReport({}, per_image, images, checks, seconds, images_per_prompt, run)
    rep.scores = summarise(per_image, rep.verdicts)
    # GenEval's rule: other objects may be drawn too (`judge.check(strict=False)`)
    rep.lenient = summarise(per_image, [judge_lib.check(s, f, strict=False)["all"] for s, f in zip(per_image, found)])
    return rep


def _run_seconds(model) -> float | None:
    """The run time so far of the programs a library model compiled (`timings`, made by its first run)."""
    if not hasattr(model, "_run"):  # not one of ours (a test's stand-in): no timings
        return None
    return float(model.__dict__.get("timings", {}).get("run_s", 0.0))


def evaluate_understanding(
    model, specs: Sequence[world.Spec], *, max_new_tokens: int = 8, split: str = "heldout"
) -> UnderstandingReport:
    """Every question of `world.qa` about each spec's render (the held-out record seed, or for
    `split="train"` the training one)."""
    if split not in world.SPLITS:
        raise ValueError(f"split {split!r} is not one of {world.SPLITS}")
    seed_of = heldout_seed if split == "heldout" else train_seed
    images, rows = [], []
    for s in specs:
        seed = seed_of(s)
        img = world.render(s, seed)
        for kind, q, a in world.qa(s, seed):
            images.append(img)
            rows.append((kind, q, a))
    t = time.perf_counter()
    answers = model.answer(images, [q for _, q, _ in rows], max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - t
    out = [(k, q, a, ans) for (k, q, a), ans in zip(rows, answers, strict=True)]
    acc = {}
    for kind in world.QUESTION_KINDS:
        hits = [normalise_answer(ans) == a for k, _, a, ans in out if k == kind]
        if hits:
            acc[kind] = float(np.mean(hits))
    acc["all"] = float(np.mean([normalise_answer(ans) == a for _, _, a, ans in out])) if out else float("nan")
    return UnderstandingReport(acc, out, seconds)


def verdict_grid(rep: GenerationReport) -> np.ndarray:
    """uint8 grid: one row per task kind (its images in prompt order), each image framed green when the
    judge found it right and red when not; rows padded with gray."""
    from janusflow_jax.images import make_grid

    by_kind: dict[str, list[np.ndarray]] = {}
    for spec, img, ok in zip(rep.specs, rep.images, rep.verdicts, strict=True):
        framed = np.array(img, np.uint8, copy=True)
        framed[:FRAME] = framed[-FRAME:] = framed[:, :FRAME] = framed[:, -FRAME:] = PASS_RGB if ok else FAIL_RGB
        by_kind.setdefault(spec.kind, []).append(framed)
    cols = max(len(v) for v in by_kind.values())
    blank = np.full_like(rep.images[0], 128)
    tiles = [t for k in world.KINDS if k in by_kind for t in by_kind[k] + [blank] * (cols - len(by_kind[k]))]
    return make_grid(np.stack(tiles), cols=cols)


def format_generation(rep: GenerationReport, label: str) -> str:
    cols = [k for k in world.KINDS if k in rep.scores] + ["overall"]
    head = f"{'generation':<30}" + "".join(f"{c:>14}" for c in cols)
    line = f"{label:<30}" + "".join(f"{rep.scores[c]:>14.3f}" for c in cols)
    n = len(rep.specs)
    warm = f", {rep.run_seconds / n:.3f} s/image compiles excluded" if rep.run_seconds is not None and n else ""
    count = f"{n // rep.images_per_prompt} prompts × {rep.images_per_prompt}"
    out = f"{head}\n{line}   ({count}, {rep.seconds:.1f}s{warm})"
    if rep.lenient:
        out += "\n" + f"{'  extra objects allowed':<30}" + "".join(f"{rep.lenient[c]:>14.3f}" for c in cols)
    return out


def format_understanding(rep: UnderstandingReport) -> str:
    lines = [f"{'understanding (question kind)':<34}{'accuracy':>9}{'questions':>11}"]
    for kind, v in rep.accuracy.items():
        n = len(rep.rows) if kind == "all" else sum(r[0] == kind for r in rep.rows)
        lines.append(f"{kind:<34}{v:>9.3f}{n:>11}")
    lines.append(f"({len(rep.rows)} answers, {rep.seconds:.1f}s)")
    return "\n".join(lines)


def evaluate_vae(vae_cfg, vae_params, specs: Sequence[world.Spec] | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Judge scores (per kind, overall) of a VAE's reconstructions of the exact held-out renders of
    `specs` (default: every spec of the world, train and held-out): the generator can only draw what
    its VAE decodes, so this should read 1.0 before the generator trains."""
    from janusflow_jax.shapes.evaluate import reconstruct

    specs = list(world.all_specs() if specs is None else specs)
    images = np.stack([world.render(s, heldout_seed(s)) for s in specs])
    recon = reconstruct(vae_cfg, vae_params, images)
    return summarise(specs, [judge_lib.judge(r, s) for r, s in zip(recon, specs)]), recon
