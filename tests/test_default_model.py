"""The model shipped with the package (janusflow_jax/default_model): it loads without a path, draws and
answers, the CLIs use it without --checkpoint, and the held-out evaluation runs on a handful of
combinations. (The full evaluation is `janusflow-eval shapes`; its figures are in the README.)"""

import os

import numpy as np
import pytest

import janusflow_jax
from janusflow_jax.shapes import evaluate, world


@pytest.fixture(scope="module")
def model():
    assert os.path.isdir(janusflow_jax.DEFAULT_MODEL)
    return janusflow_jax.load()


def test_loads_and_runs(model):
    images = model.generate_images(["a large red circle in the top left on a white background"], num_steps=10)
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8
    assert images.std() > 10  # a drawing, not a flat or blank canvas
    answers = model.answer([images[0]], ["what shape is in the image?"], max_new_tokens=8)
    assert len(answers) == 1 and answers[0].strip()


def test_heldout_handful(model):
    """Five held-out combinations (never seen in training), drawn at the default 30 Euler steps and
    asked all five questions about their exact renders. On all 82 held-out combinations the shipped
    model scores 1.0 on generation and >= 0.976 on every question (README); a broken loader, tokenizer,
    bfloat16 cast or sampler scores near chance (1/3 shape, 1/6 colour, 1/5 position)."""
    combos = world.combinations("heldout")[::17][:5]
    gen = evaluate.evaluate_generation(model, combos, num_steps=30, cfg_weight=2.0)
    assert gen.accuracy["all"] >= 0.8, gen.accuracy
    und = evaluate.evaluate_understanding(model, combos)
    assert min(und.accuracy.values()) >= 0.8, und.accuracy


def test_cli_without_checkpoint(tmp_path, capsys):
    from sample import cli

    out = tmp_path / "s"
    assert cli.main(["generate", "--prompt", "a small blue square in the center on a black background",
                     "--steps", "10", "--out", str(out)]) == 0
    assert (out / "0000.png").is_file() and (out / "grid.png").is_file()
    capsys.readouterr()
    assert cli.main(["understand", "--image", str(out / "0000.png"), "--question", "what color is the background?"]) == 0
    assert capsys.readouterr().out.strip()
