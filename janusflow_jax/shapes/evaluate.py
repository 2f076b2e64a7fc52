"""Held-out evaluation of a JanusFlow on the shapes world (what `janusflow-eval shapes` runs).

Generation: one image per held-out canonical caption, judged from pixels (`judge.judge`); the report
gives per-attribute accuracy and `all` (every attribute right). Understanding: the five questions about
each held-out combination rendered exactly; an answer is right when, lower-cased and stripped of
surrounding whitespace and final punctuation, it equals the expected answer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from janusflow_jax.shapes.judge import accuracy as judge_accuracy
from janusflow_jax.shapes.judge import judge as judge_image
from janusflow_jax.shapes import world


@dataclasses.dataclass
class GenerationReport:
    accuracy: dict[str, float]  # per attribute + "all"
    images: np.ndarray  # uint8 [N, 64, 64, 3], caption order
    captions: list[str]
    predicted: list[world.Attributes]
    seconds: float


@dataclasses.dataclass
class UnderstandingReport:
    accuracy: dict[str, float]  # per question
    answers: list[tuple[str, str, str]]  # (question, expected, answer)
    seconds: float


def normalise_answer(text: str) -> str:
    return text.strip().lower().rstrip(".!?").strip()


def evaluate_generation(
    model, combos: list[world.Attributes], *, num_steps=30, cfg_weight=2.0, solver="euler", seed=0, batch_size=None
) -> GenerationReport:
    import time

    captions = [a.caption() for a in combos]
    t = time.perf_counter()
    images = np.asarray(
        model.generate_images(
            captions, num_steps=num_steps, cfg_weight=cfg_weight, seed=seed, solver=solver, batch_size=batch_size
        )
    )
    seconds = time.perf_counter() - t
    predicted = [judge_image(img) for img in images]
    return GenerationReport(judge_accuracy(predicted, combos), images, captions, predicted, seconds)


def evaluate_understanding(model, combos: list[world.Attributes], *, max_new_tokens=8) -> UnderstandingReport:
    import time

    images, questions, expected = [], [], []
    for a in combos:
        img = world.render(a)
        for q, ans in a.qa():
            images.append(img)
            questions.append(q)
            expected.append(ans)
    t = time.perf_counter()
    answers = model.answer(images, questions, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - t
    rows = list(zip(questions, expected, answers, strict=True))
    acc = {}
    for q in world.QUESTIONS.values():
        hits = [normalise_answer(a) == e for qq, e, a in rows if qq == q]
        acc[q] = float(np.mean(hits)) if hits else float("nan")
    return UnderstandingReport(acc, rows, seconds)


def reconstruct(vae_cfg, vae_params, images_u8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 images → VAE encode (latent mean) → decode → uint8 images (the sampler's conversion)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from janusflow_jax.nn.vae import AutoencoderKL
    from janusflow_jax.sharding import use_mesh

    with use_mesh():
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: AutoencoderKL(vae_cfg, rngs=nnx.Rngs(0))))

    @jax.jit
    def run(params, x):
        vae = nnx.merge(graphdef, params)
        mean, _ = vae.encode(x.astype(jnp.float32) / 127.5 - 1.0)
        y = vae.decode(mean).astype(jnp.float32)
        return jnp.clip((y + 1.0) / 2.0 * 255.0, 0.0, 255.0).astype(jnp.uint8)

    out = [np.asarray(run(vae_params, images_u8[i : i + batch_size])) for i in range(0, len(images_u8), batch_size)]
    return np.concatenate(out)


def evaluate_vae(vae_cfg, vae_params, combos: list[world.Attributes]) -> tuple[dict[str, float], np.ndarray]:
    """Judge accuracy of the VAE reconstructions of every combination's exact render (the generator
    can only draw what its VAE can decode, so this must be 1.0 before the generator is trained)."""
    images = np.stack([world.render(a) for a in combos])
    recon = reconstruct(vae_cfg, vae_params, images)
    return judge_accuracy([judge_image(r) for r in recon], combos), recon


def format_generation(rep: GenerationReport, label: str) -> str:
    cols = [*world.FIELDS, "all"]
    head = f"{'generation':<28}" + "".join(f"{c:>11}" for c in cols)
    line = f"{label:<28}" + "".join(f"{rep.accuracy[c]:>11.3f}" for c in cols)
    return f"{head}\n{line}   ({len(rep.captions)} captions, {rep.seconds:.1f}s)"


def format_understanding(rep: UnderstandingReport) -> str:
    lines = [f"{'understanding':<34}{'accuracy':>9}"]
    lines += [f"{q:<34}{v:>9.3f}" for q, v in rep.accuracy.items()]
    n = len(rep.answers)
    lines.append(f"({n} answers, {rep.seconds:.1f}s)")
    return "\n".join(lines)
