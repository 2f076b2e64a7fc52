"""The held-out evaluation (janusflow-eval shapes) scores what a model draws and answers correctly.

A stand-in model with a known behaviour is used here (the shipped checkpoint is evaluated in
test_default_model.py): it draws every caption right except that it always paints circles, and it
answers every question right except the size question, so the expected accuracies follow from the
held-out combinations alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from janusflow_jax.shapes import evaluate, world


class _Model:
    def __init__(self):
        self.by_caption = {a.caption(): a for a in world.all_combinations()}

    def generate_images(self, captions, *, num_steps, cfg_weight, seed, solver, batch_size=None):
        assert num_steps > 0 and solver in ("euler", "heun")
        out = []
        for c in captions:
            a = self.by_caption[c]
            out.append(world.render(world.Attributes("circle", a.colour, a.size, a.position, a.background)))
        return np.stack(out)

    def answer(self, images, questions, *, max_new_tokens):
        out = []
        for img, q in zip(images, questions, strict=True):
            a = None
            for cand in world.all_combinations():  # find the combination by its exact render
                if np.array_equal(world.render(cand), img):
                    a = cand
                    break
            field = {v: k for k, v in world.QUESTIONS.items()}[q]
            out.append("wrong" if field == "size" else f" {getattr(a, field).upper()}.")
        return out


def test_generation_and_understanding_accuracy_follow_the_model():
    combos = world.combinations("heldout")[::7]
    m = _Model()
    g = evaluate.evaluate_generation(m, combos, num_steps=3)
    circles = np.mean([a.shape == "circle" for a in combos])
    assert 0 < circles < 1
    assert g.accuracy["shape"] == pytest.approx(circles)
    assert g.accuracy["all"] == pytest.approx(circles)
    for f in ("colour", "size", "position", "background"):
        assert g.accuracy[f] == 1.0
    u = evaluate.evaluate_understanding(m, combos)
    assert u.accuracy[world.QUESTIONS["size"]] == 0.0
    for f in ("shape", "colour", "position", "background"):
        assert u.accuracy[world.QUESTIONS[f]] == 1.0  # normalisation: case, spaces, final full stop
    assert len(u.answers) == 5 * len(combos)


def test_eval_cli_rejects_bad_input(tmp_path, capsys):
    from sample import eval_cli

    assert eval_cli.main(["shapes", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    assert eval_cli.main(["shapes", "--checkpoint", str(tmp_path), "--also", "ten:heun"]) == 2
    assert "STEPS:SOLVER" in capsys.readouterr().err
    assert eval_cli.main(["shapes", "--checkpoint", str(tmp_path), "--steps", "0"]) == 2
    assert "positive" in capsys.readouterr().err


def test_eval_cli_end_to_end_with_a_model(tmp_path, monkeypatch, capsys):
    import janusflow_jax
    from sample import eval_cli

    monkeypatch.setattr(janusflow_jax, "load", lambda path, dtype: _Model())
    out = tmp_path / "ev"
    rc = eval_cli.main(
        [
            "shapes",
            "--checkpoint",
            str(tmp_path),
            "--limit",
            "7",
            "--also",
            "2:heun",
            "--out",
            str(out),
            "--json",
            str(tmp_path / "f.json"),
        ]
    )
    assert rc == 0
    figures = json.loads((tmp_path / "f.json").read_text())
    assert set(figures["generation"]) == {"30_euler", "2_heun"}
    assert figures["understanding"][world.QUESTIONS["colour"]] == 1.0
    assert (out / "grid_30_euler.png").exists() and (out / "grid_2_heun.png").exists()
    assert "all" in capsys.readouterr().out


def test_vae_evaluation_judges_reconstructions(tmp_path, capsys):
    """A random VAE reconstructs nothing recognisable: every attribute near chance, `all` ≈ 0 (on every
    9th combination: 60 of the 540)."""
    from conftest import TINY_DIR

    from sample import eval_cli

    argv = ["shapes-vae", "--vae", str(TINY_DIR / "vae"), "--out", str(tmp_path), "--every", "9"]
    acc = eval_cli.shapes_vae(eval_cli._parser().parse_args(argv))
    assert acc["all"] < 0.05 and set(acc) == {*world.FIELDS, "all"}
    assert "judged on 60 of the 540 combinations" in capsys.readouterr().out
    assert (tmp_path / "vae_reconstructions.png").exists()
    assert eval_cli.main(["shapes-vae", "--vae", str(tmp_path / "nope")]) == 2
    assert eval_cli.main(["shapes-vae", "--vae", str(TINY_DIR / "vae"), "--every", "0"]) == 2
