"""janusflow-eval geneval: the evaluator against oracle models (exact renders and answers score 1 on
every kind; wrong ones score what the judge says, computed independently here), and the CLI on both
tiny fixture families (figures, the verdict grid PNG, bad options → one line)."""

import json

import numpy as np
import pytest
from conftest import JANUS_DIR, TINY_DIR
from PIL import Image

from janusflow_jax.geneval import evaluate, judge, world
from sample.eval_cli import main as eval_main

_BY_CAPTION = {world.caption(s, 0): s for s in world.all_specs()}


class _Oracle:
    """Draws each caption's spec exactly (layout seeded by image index) and answers from the world."""

    family = "oracle"

    def __init__(self, wrong_count=False, extra_object=False):
        self.wrong_count, self.extra_object = wrong_count, extra_object
        self._answers = {}
        for s in evaluate.prompt_specs():
            seed = evaluate.heldout_seed(s)
            key = world.render(s, seed).tobytes()
            for _, q, a in world.qa(s, seed):
                self._answers[key, q] = a

    def generate_images(self, prompts, *, seed=0, batch_size=None, **kw):
        out = []
        for i, p in enumerate(prompts):
            spec = _BY_CAPTION[p]
            if self.wrong_count and spec.kind == "counting":  # one object fewer (or one more for a single)
                o = spec.objects[0]
                spec = world.Spec("counting", (world.Obj(o.shape, o.colour, o.count - 1 if o.count > 1 else 2),))
            if self.extra_object and spec.kind == "single_object":  # the object and one of another shape
                other = next(s for s in world.SHAPES if s != spec.objects[0].shape)
                spec = world.Spec("two_objects", tuple(sorted((spec.objects[0], world.Obj(other)),
                                                              key=lambda o: world.SHAPES.index(o.shape))))  # fmt: skip
            out.append(world.render(spec, seed * 1000 + i))
        return np.stack(out)

    def answer(self, images, questions, max_new_tokens=8):
        return [self._answers[np.asarray(img).tobytes(), q].upper() + "." for img, q in zip(images, questions)]


def test_prompt_list_covers_every_kind_from_the_heldout_split():
    specs = evaluate.prompt_specs()
    assert len(specs) == 82 + 5  # every held-out spec, and single_object's five (it holds nothing out)
    assert all(world.is_heldout(s) for s in specs if s.kind != "single_object")
    assert [s.kind for s in specs] == sorted((s.kind for s in specs), key=world.KINDS.index)
    few = evaluate.prompt_specs(2)
    assert {k: sum(s.kind == k for s in few) for k in world.KINDS} == dict.fromkeys(world.KINDS, 2)
    # the understanding images are the held-out split's own renders
    ex = {e.spec: e.seed for e in world.examples("heldout")}
    assert all(evaluate.heldout_seed(s) == ex[s] for s in specs if s in ex)


def test_oracle_scores_one_and_a_wrong_count_scores_zero_on_counting():
    specs = evaluate.prompt_specs(3)
    rep = evaluate.evaluate_generation(_Oracle(), specs, images_per_prompt=2, seed=1)
    assert rep.scores == {**dict.fromkeys(world.KINDS, 1.0), "overall": 1.0}
    assert len(rep.images) == 2 * len(specs) and rep.specs[0] == rep.specs[1] == specs[0]
    bad = evaluate.evaluate_generation(_Oracle(wrong_count=True), specs, seed=1)
    assert bad.scores["counting"] == 0.0 and bad.scores["colors"] == 1.0
    assert bad.scores["overall"] == pytest.approx(5 / 6)
    assert rep.lenient == rep.scores and bad.lenient == bad.scores  # GenEval's rule: the count is exact too
    # an extra object of another shape fails the strict judge only
    extra = evaluate.evaluate_generation(_Oracle(extra_object=True), specs, seed=1)
    assert extra.scores["single_object"] == 0.0 and extra.lenient["single_object"] == 1.0
    assert extra.lenient == {**dict.fromkeys(world.KINDS, 1.0), "overall": 1.0}
    # the report's verdicts are the judge's, image by image
    assert bad.verdicts == [judge.judge(img, s) for img, s in zip(bad.images, bad.specs)]
    # the grid: one row per kind, framed green / red as judged
    grid = evaluate.verdict_grid(bad)
    assert grid.shape == (6 * 64, 3 * 64, 3)
    row = world.KINDS.index("counting")
    assert tuple(grid[row * 64, 0]) == evaluate.FAIL_RGB and tuple(grid[0, 0]) == evaluate.PASS_RGB
    u = evaluate.evaluate_understanding(_Oracle(), specs)
    assert u.accuracy == {**dict.fromkeys(world.QUESTION_KINDS, 1.0), "all": 1.0}


def test_train_split_understanding_asks_about_training_records():
    """split="train": training specs, as many per kind as held out, rendered exactly as the QA records
    are (repeat 0, whatever the repeats); the oracle that knows only the held-out answers fails them."""
    held, train = evaluate.understanding_specs("heldout", 2), evaluate.understanding_specs("train", 2)
    assert [s.kind for s in train] == [s.kind for s in held]
    assert not any(world.is_heldout(s) for s in train)
    ex = {e.spec: e for e in world.examples("train", repeats=1)}
    for s in train:
        seed = evaluate.train_seed(s)
        assert seed == ex[s].seed and tuple(ex[s].qa) == tuple(world.qa(s, seed))
    rows = {}
    for s in train:
        img = world.render(s, evaluate.train_seed(s))
        for _, q, a in world.qa(s, evaluate.train_seed(s)):
            rows[img.tobytes(), q] = a

    class Knows(_Oracle):
        def answer(self, images, questions, max_new_tokens=8):
            return [rows[np.asarray(i).tobytes(), q] for i, q in zip(images, questions)]

    assert evaluate.evaluate_understanding(Knows(), train, split="train").accuracy["all"] == 1.0
    with pytest.raises(KeyError):  # the held-out oracle has never seen these images
        evaluate.evaluate_understanding(_Oracle(), train, split="train")
    with pytest.raises(ValueError, match="split 'test'"):
        evaluate.understanding_specs("test")


def test_understanding_scores_a_constant_answer_by_question_kind():
    class Circle(_Oracle):
        def answer(self, images, questions, max_new_tokens=8):
            return ["circle"] * len(questions)

    specs = evaluate.prompt_specs()
    u = evaluate.evaluate_understanding(Circle(), specs)
    want = {}
    for s in specs:
        for kind, _, a in world.qa(s, evaluate.heldout_seed(s)):
            want.setdefault(kind, []).append(a == "circle")
    assert u.accuracy["what"] == pytest.approx(np.mean(want["what"])) and 0 < u.accuracy["what"] < 1
    assert u.accuracy["count"] == u.accuracy["color"] == u.accuracy["position"] == 0.0


@pytest.mark.parametrize(
    "fixture,samplers", [(TINY_DIR, ["2:euler"]), (JANUS_DIR, ["greedy"])], ids=["janusflow", "janus"]
)
def test_cli_on_both_families(fixture, samplers, tmp_path, capsys):
    out, js = tmp_path / "eval", tmp_path / "figures.json"
    argv = ["geneval", "--checkpoint", str(fixture), "--per-kind", "1", "--out", str(out), "--json", str(js)]
    argv += [a for s in samplers for a in ("--sampler", s)]
    assert eval_main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "overall" in text and "understanding" in text
    fig = json.loads(js.read_text())
    name = samplers[0].replace(":", "_")
    assert set(fig["generation"][name]) >= {*world.KINDS, "overall"}
    assert set(fig["generation"][name]["extra_objects_allowed"]) == {*world.KINDS, "overall"}
    assert "extra objects allowed" in text
    assert all(0.0 <= fig["generation"][name][k] <= 1.0 for k in world.KINDS)
    g = fig["generation"][name]  # the warm time per image: the run time of the programs, not their compiles
    assert 0.0 < g["seconds_per_image"] * fig["prompts"] * fig["images_per_prompt"] < g["seconds"]
    assert "s/image compiles excluded" in text
    assert set(fig["understanding"]) == {*world.QUESTION_KINDS, "all", "seconds"}
    png = Image.open(out / f"geneval_{name}.png")
    assert png.size == (64, 6 * 64)
    # understanding only, on held-out and training renders
    argv = ["geneval", "--checkpoint", str(fixture), "--per-kind", "1", "--skip-generation",
            "--understanding-split", "both", "--json", str(js)]  # fmt: skip
    assert eval_main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "[heldout renders]" in text and "[train renders]" in text and "overall" not in text
    fig = json.loads(js.read_text())
    assert fig["generation"] == {}
    assert set(fig["understanding"]) == set(fig["understanding_train"]) == {*world.QUESTION_KINDS, "all", "seconds"}
    # bad options: one line, exit 2
    wrong = "greedy" if fixture == TINY_DIR else "30:euler"
    assert eval_main(["geneval", "--checkpoint", str(fixture), "--sampler", wrong, "--skip-understanding"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("janusflow-eval: error: --sampler")


def test_vae_cli_judges_every_spec(tmp_path, capsys):
    """The shipped VAE's reconstructions (2 specs per kind; all 545 without --per-kind): scores per
    kind printed, the grid written; a missing VAE is one line."""
    import janusflow_jax.model as model_lib

    assert len(evaluate.spread_specs()) == 545 and len(evaluate.spread_specs(2)) == 12
    argv = ["geneval-vae", "--vae", model_lib.DEFAULT_MODEL, "--per-kind", "2", "--out", str(tmp_path)]
    assert eval_main(argv) == 0
    out = capsys.readouterr().out
    assert "2 per kind of the 12 GenEval-world specs" in out and all(k in out for k in world.KINDS)
    assert Image.open(tmp_path / "vae_reconstructions.png").size == (12 * 64, 64)
    assert eval_main(["geneval-vae", "--vae", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
