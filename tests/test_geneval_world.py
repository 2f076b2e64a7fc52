"""The synthetic GenEval world: specs, exact rendering, captions / QA, splits and their guaranteed pairs,
the pixel judge (accepts every exact render, rejects each kind of violation), the TFDS `geneval` builder
read by the TrainLoader, and the world's processor folder."""

import dataclasses
import itertools
import json
import pathlib
import re

import numpy as np
import pytest

from janusflow_jax.geneval import judge as J
from janusflow_jax.geneval import world as W
from janusflow_jax.geneval.world import Obj, Placement, Spec
from janusflow_jax.shapes.world import COLOURS, decode_png, encode_png

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROCESSOR_DIR = ROOT / "train" / "configs" / "geneval" / "processor"
SIZES = {"single_object": 5, "two_objects": 10, "counting": 120, "colors": 30, "position": 80, "color_attr": 300}
_PACK = np.array([1 << 16, 1 << 8, 1])  # RGB → one integer
TRAIN = {k: W.specs("train", k) for k in W.KINDS}
HELD = {k: W.specs("heldout", k) for k in W.KINDS}


def _shapes(s: Spec) -> list[str]:
    return [o.shape for o in s.objects]


# --- specs, captions, questions ---------------------------------------------------------------------


def test_specs_and_validation():
    assert {k: len(W.all_specs(k)) for k in W.KINDS} == SIZES
    for k in W.KINDS:
        assert len(set(W.all_specs(k))) == SIZES[k]
    for bad in (
        lambda: Spec("single_object", (Obj("circle", "red"),)),  # colour stated where it is not
        lambda: Spec("colors", (Obj("circle"),)),  # colour missing
        lambda: Spec("two_objects", (Obj("circle"), Obj("circle"))),  # same shape twice
        lambda: Spec("color_attr", (Obj("circle", "red"), Obj("square", "red"))),  # same colour twice
        lambda: Spec("position", (Obj("circle"), Obj("square"))),  # relation missing
        lambda: Spec("position", (Obj("circle"), Obj("square")), "behind"),
        lambda: Spec("colors", (Obj("circle", "red", 2),)),  # count outside counting
        lambda: Obj("star"),
        lambda: Obj("circle", "grey"),
        lambda: Obj("circle", "red", 5),
        lambda: Spec("photo", (Obj("circle"),)),
    ):
        with pytest.raises(ValueError):
            bad()
    assert Spec("two_objects", (Obj("square"), Obj("circle"))).canonical() == W.all_specs("two_objects")[0]
    assert W.is_heldout(Spec("two_objects", (Obj("cross"), Obj("square"))))  # unordered: canonical order decides


def test_captions():
    pos = Spec("position", (Obj("circle"), Obj("square")), "left of")
    assert W.captions(pos) == [
        "a photo of a circle left of a square",
        "a circle left of a square",
        "a photo of a circle to the left of a square",
        "an image of a circle left of a square",
    ]
    assert W.caption(Spec("counting", (Obj("cross", "orange", 3),))) == "a photo of three orange crosses"
    assert W.caption(Spec("counting", (Obj("cross", "red", 1),)), 3) == "exactly one red cross"
    assert W.caption(Spec("colors", (Obj("square", "orange"),)), 3) == "a square that is orange"
    assert W.caption(Spec("color_attr", (Obj("circle", "red"), Obj("square", "blue"))), 2) == (
        "a photo of a blue square and a red circle"
    )
    with pytest.raises(ValueError):
        W.caption(pos, W.N_VARIANTS)
    for s in W.all_specs():
        caps = W.captions(s)
        assert len(set(caps)) == W.N_VARIANTS  # distinct paraphrases
        for c in caps:  # every stated value is in every paraphrase
            assert re.fullmatch(r"[a-z ]+", c)
            for o in s.objects:
                assert (o.shape if o.count == 1 else W.PLURALS[o.shape]) in c.split()
                assert o.colour is None or o.colour in c.split()
                assert s.kind != "counting" or W.COUNT_WORDS[o.count] in c.split()
            if s.relation:
                assert s.relation in c or W.REL_PARAPHRASE[s.relation] in c
            assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", c)  # articles


def test_questions_and_answers_match_the_pixels():
    kinds_seen = set()
    for s in [sp for k in W.KINDS for sp in W.all_specs(k)[::7]]:
        qa = W.qa(s, 3)
        found = J.detect(W.render(s, 3))
        for qk, q, a in qa:
            kinds_seen.add(qk)
            assert qk in W.QUESTION_KINDS and q.endswith("?") and re.fullmatch(r"[a-z ]+", a), (q, a)
            if qk == "count":
                assert a == W.COUNT_WORDS[len(found)]
            elif qk == "color":
                words = re.findall(r"[a-z]+", q)
                shape = next(o.shape for o in s.objects if o.shape in words or W.PLURALS[o.shape] in words)
                assert {d.colour for d in found if d.shape == shape} == {a}
            elif qk == "what":
                assert a.split(" and ") == _shapes(s) and {d.shape for d in found} == set(_shapes(s))
            elif qk == "position":  # the judge's relation on the detections agrees with the answer
                m = re.fullmatch(r"is the (\w+) (left of|right of|above|below) the (\w+)\?", q)
                (da,), (db,) = ([d for d in found if d.shape == m[i]] for i in (1, 3))
                assert J.relation_holds(da, db, m[2]) == (a == "yes"), (s, q, a)
            elif qk == "where":  # the answer is the relation the judge finds, its opposite does not hold
                m = re.fullmatch(r"is the (\w+) (left or right of|above or below) the (\w+)\?", q)
                (da,), (db,) = ([d for d in found if d.shape == m[i]] for i in (1, 3))
                lo, hi = m[2].removesuffix(" of").split(" or ")
                assert a in (lo, hi), (q, a)
                rel = {"left": "left of", "right": "right of"}.get(a, a)
                assert J.relation_holds(da, db, rel) and not J.relation_holds(da, db, W.INVERSE[rel]), (s, q, a)
        answers = [a for qk, _, a in qa if qk == "position"]
        where = [a for qk, _, a in qa if qk == "where"]
        if len(s.objects) == 2:  # every two-object scene: yes/no pairs, 1 or 2 axes, one `where` per axis
            assert len(answers) in (2, 4) and answers.count("yes") == answers.count("no")
            assert 2 * len(where) == len(answers)
        else:
            assert answers == where == []
        if s.kind == "position":  # exactly the stated relation's pair
            assert [q for qk, q, _ in qa if qk == "position"] == [
                f"is the {s.objects[0].shape} {r} the {s.objects[1].shape}?"
                for r in (s.relation, W.INVERSE[s.relation])
            ]
            kinds_seen.add("two-object position")
    assert kinds_seen == set(W.QUESTION_KINDS) | {"two-object position"}


# --- rendering ---------------------------------------------------------------------------------------


def test_render_deterministic_and_exact():
    lo, hi = W.CENTRE_RANGE
    for s in W.all_specs()[::3]:
        for seed in (0, 11):
            img = W.render(s, seed)
            assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
            assert np.array_equal(img, W.render(s, seed))  # same seed → same pixels
            placed = W.layout(s, seed)
            assert [p.shape for p in placed] == [o.shape for o in s.objects for _ in range(o.count)]
            for p, o in zip(placed, [o for o in s.objects for _ in range(o.count)]):
                assert o.colour in (None, p.colour)
                assert lo <= p.x <= hi and lo <= p.y <= hi
                assert p.x % W.GRID == 0 and p.y % W.GRID == 0  # every box covers whole 8-px cells
            for a, b in itertools.combinations(placed, 2):
                assert max(abs(a.x - b.x), abs(a.y - b.y)) >= W.MIN_SEPARATION
            colours = set(np.unique(img.reshape(-1, 3).astype(np.int64) @ _PACK).tolist())  # flat, no anti-aliasing
            assert colours == {int(np.dot(c, _PACK)) for c in [W.BACKGROUND] + [COLOURS[p.colour] for p in placed]}
            assert np.array_equal(decode_png(encode_png(img)), img)
        if s.kind == "position":
            for seed in range(5):
                a, b = W.layout(s, seed)
                along = {"left of": b.x - a.x, "right of": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}
                across = abs(a.y - b.y) if s.relation in ("left of", "right of") else abs(a.x - b.x)
                assert along[s.relation] >= W.RELATION_DISTANCE and across <= W.RELATION_OFFSET
    s = Spec("position", (Obj("circle"), Obj("square")), "above")
    assert len({W.layout(s, seed)[0] for seed in range(20)}) > 10  # the seed moves the objects
    assert len({W.layout(Spec("single_object", (Obj("cross"),)), seed)[0].colour for seed in range(40)}) == 6
    masks = {sh: W.object_mask(sh, (32, 32)) for sh in W.SHAPES}
    assert {sh: int(m.sum()) for sh, m in masks.items()} == {
        "circle": 208, "square": 256, "triangle": 128, "diamond": 112, "cross": 156,
    }  # fmt: skip
    assert all(m[24:40, 24:40].sum() == m.sum() for m in masks.values())  # inside the 16×16 box


def test_examples_and_seeds():
    tr = W.examples("train", repeats=2, min_per_kind=40)
    ho = W.examples("heldout")
    assert [e.id for e in tr] == [e.id for e in W.examples("train", repeats=2, min_per_kind=40)]
    assert [e.caption for e in tr] == [e.caption for e in W.examples("train", repeats=2, min_per_kind=40)]
    for k in W.KINDS:
        n = sum(e.spec.kind == k for e in tr)
        assert n == len(TRAIN[k]) * max(2, -(-40 // len(TRAIN[k]))) and n >= 40
    assert {e.spec for e in tr} == set(W.specs("train")) and {e.spec for e in ho} == set(W.specs("heldout"))
    assert len(ho) == len(W.specs("heldout")) and all(e.caption == W.caption(e.spec) for e in ho)
    assert {e.seed for e in tr}.isdisjoint({e.seed for e in ho})
    canonical = sum(e.caption == W.caption(e.spec) for e in tr)
    assert len(tr) / 2 < canonical < len(tr)
    assert all(e.caption in W.captions(e.spec) and list(e.qa) == W.qa(e.spec, e.seed) for e in tr)
    e = tr[0]
    assert np.array_equal(e.image(), W.render(e.spec, e.seed))
    assert [x.caption for x in W.examples("train", seed=5, repeats=2)] != [x.caption for x in tr]


# --- splits -------------------------------------------------------------------------------------------


def test_splits_disjoint_deterministic_and_every_value_in_training():
    for k in W.KINDS:
        assert set(TRAIN[k]).isdisjoint(HELD[k]) and set(TRAIN[k]) | set(HELD[k]) == set(W.all_specs(k))
        assert W.specs("train", k) == TRAIN[k] and W.specs("heldout", k) == HELD[k]
        assert all(not W.is_heldout(s) for s in TRAIN[k]) and all(W.is_heldout(s) for s in HELD[k])
        assert {s.kind for s in TRAIN[k]} == {k}
        values = lambda ss: {  # noqa: E731
            *(("shape", o.shape) for s in ss for o in s.objects),
            *(("colour", o.colour) for s in ss for o in s.objects if o.colour),
            *(("count", o.count) for s in ss for o in s.objects),
            *(("relation", s.relation) for s in ss if s.relation),
        }
        assert values(TRAIN[k]) == values(W.all_specs(k)), k
    assert {k: len(v) for k, v in HELD.items()} == {
        "single_object": 0, "two_objects": 2, "counting": 18, "colors": 4, "position": 16, "color_attr": 42,
    }  # fmt: skip
    # position: a scene's two phrasings (A left of B, B right of A) are on the same side
    for s in W.all_specs("position"):
        a, b = s.objects
        assert W.is_heldout(s) == W.is_heldout(Spec("position", (b, a), W.INVERSE[s.relation]))
    # colors holds out exactly the count-one slice of counting
    for s in W.all_specs("colors"):
        o = s.objects[0]
        assert W.is_heldout(s) == W.is_heldout(Spec("counting", (Obj(o.shape, o.colour, 1),)))
    # the fixed evaluation list
    assert list(W.EVAL_SPECS) == list(W.KINDS) and W.EVAL_SPECS == W.evaluation_specs()
    assert W.EVAL_SPECS["single_object"] == TRAIN["single_object"]
    for k in W.KINDS[1:]:
        assert set(W.EVAL_SPECS[k]) <= set(HELD[k]) and len(W.EVAL_SPECS[k]) == min(W.EVAL_PER_KIND, len(HELD[k]))


def _pairs(kind: str, ss) -> set:
    """The documented pairs (`world.PAIRS`) of the specs `ss`, as hashable tuples."""
    out = set()
    for s in ss:
        if kind in ("two_objects", "colors"):  # guaranteed through other kinds: see the cross-kind test
            continue
        if kind == "counting":
            (o,) = s.objects
            out |= {("sc", o.shape, o.colour), ("sn", o.shape, o.count), ("cn", o.colour, o.count)}
        elif kind == "position":
            a, b = _shapes(s)
            out |= {("ar", a, s.relation), ("br", b, s.relation), ("ab", a, b)}
        elif kind == "color_attr":
            for x, y in itertools.permutations(s.objects):
                out |= {("obj", x.shape, x.colour), ("ss", x.shape, y.shape), ("cc", x.colour, y.colour)}
                out |= {("obj+s", x.shape, x.colour, y.shape), ("obj+c", x.shape, x.colour, y.colour)}
    return out


def test_every_documented_pair_is_in_training():
    assert set(W.PAIRS) == set(W.KINDS)
    for k in ("counting", "position", "color_attr"):  # inside the kind
        assert _pairs(k, HELD[k]) and _pairs(k, HELD[k]) <= _pairs(k, TRAIN[k]), k
        assert _pairs(k, TRAIN[k]) == _pairs(k, W.all_specs(k)), k
    # two_objects: the held-out shape pair is in the training specs of position and color_attr
    for s in HELD["two_objects"]:
        pair = frozenset(_shapes(s))
        assert pair in {frozenset(_shapes(t)) for t in TRAIN["position"]}
        assert pair in {frozenset(_shapes(t)) for t in TRAIN["color_attr"]}
        assert all(any(sh in _shapes(t) for t in TRAIN["two_objects"]) for sh in pair)
    # colors: the held-out (shape, colour) is in the training specs of counting and color_attr
    for s in HELD["colors"]:
        (o,) = s.objects
        assert any((t.objects[0].shape, t.objects[0].colour) == (o.shape, o.colour) for t in TRAIN["counting"])
        assert any(Obj(o.shape, o.colour) in t.objects for t in TRAIN["color_attr"])


# --- judge --------------------------------------------------------------------------------------------


def test_judge_accepts_every_exact_render():
    n = 0
    for k in W.KINDS:
        for s in W.all_specs(k):
            for seed in (0, 1):
                img = W.render(s, seed)
                assert J.judge(img, s), (s, seed, J.check(s, J.detect(img)))
                n += 1
        for s in W.EVAL_SPECS[k]:  # many seeds for the evaluation list
            for seed in range(2, 14):
                img = W.render(s, seed)
                found = J.detect(img)
                assert J.check(s, found)["all"] and J.check(s, found, strict=False)["all"], (s, seed)
                assert all(d.iou == 1.0 for d in found)
                n += 1
    assert n == 2 * sum(SIZES.values()) + 12 * sum(len(v) for v in W.EVAL_SPECS.values())
    s = W.EVAL_SPECS["color_attr"][0]
    imgs = [W.render(s, 0), decode_png(encode_png(W.render(s, 1))), W.render(s, 2).astype(np.float32)]
    assert J.score(imgs, [s] * 3) == {"color_attr": 1.0, "overall": 1.0}


def _free_centre(placed, rng):
    lo, hi = W.CENTRE_RANGE
    for x, y in rng.permutation([(x, y) for x in range(lo, hi + 1, 2) for y in range(lo, hi + 1, 2)]):
        if all(max(abs(x - p.x), abs(y - p.y)) >= W.MIN_SEPARATION for p in placed):
            return int(x), int(y)
    return None


def _violations(s: Spec, seed: int):
    """(name, image) pairs that break the spec: missing / wrong shape / wrong colour / wrong count /
    swapped relation / an extra object (the last only breaks the strict judge)."""
    placed = W.layout(s, seed)
    rng = np.random.default_rng(seed)
    other_shape = next(sh for sh in W.SHAPES if sh not in _shapes(s))
    out = []
    for i, p in enumerate(placed):
        out.append(("missing", W.draw(placed[:i] + placed[i + 1 :])))
        out.append(("shape", W.draw([*placed[:i], dataclasses.replace(p, shape=other_shape), *placed[i + 1 :]])))
        if any(o.colour for o in s.objects):
            for c in W.COLOUR_NAMES:
                if c != p.colour:
                    out.append(("colour", W.draw([*placed[:i], dataclasses.replace(p, colour=c), *placed[i + 1 :]])))
    if s.kind == "counting":
        xy = _free_centre(placed, rng)
        if xy is not None:
            out.append(("count", W.draw([*placed, dataclasses.replace(placed[0], x=xy[0], y=xy[1])])))
    if s.kind == "position":
        a, b = placed
        out.append(("relation", W.draw([dataclasses.replace(a, x=b.x, y=b.y), dataclasses.replace(b, x=a.x, y=a.y)])))
        out.append(("relation", W.render(dataclasses.replace(s, relation=W.INVERSE[s.relation]), seed)))
    xy = _free_centre(placed, rng)
    if xy is not None:
        out.append(("extra", W.draw([*placed, Placement(other_shape, "blue", *xy)])))
    return out


def test_judge_rejects_violations():
    counts = {}
    for k in W.KINDS:
        for s in W.all_specs(k)[:: max(1, SIZES[k] // 20)]:
            for name, img in _violations(s, seed=7):
                found = J.detect(img)
                assert not J.check(s, found)["all"], (s, name, found)
                # GenEval itself allows other objects; every other violation breaks a stated constraint
                assert J.check(s, found, strict=False)["all"] == (name == "extra"), (s, name, found)
                counts[(k, name)] = counts.get((k, name), 0) + 1
    for k in W.KINDS:
        assert counts[(k, "missing")] >= 5 and counts[(k, "shape")] >= 5 and counts[(k, "extra")] >= 5, k
    for k in ("counting", "colors", "color_attr"):
        assert counts[(k, "colour")] >= 25
    assert counts[("counting", "count")] >= 15 and counts[("position", "relation")] >= 40
    assert not J.judge(np.full((64, 64, 3), 255, np.uint8), W.all_specs("single_object")[0])  # blank
    # a relation is judged by centroids with a margin; ties and near-ties are not "left of"
    a, b = J.Detection("circle", "red", 208, 20.0, 30.0, 1.0), J.Detection("square", "red", 256, 27.0, 50.0, 1.0)
    assert not J.relation_holds(a, b, "left of") and J.relation_holds(a, b, "above")
    assert J.relation_holds(b, a, "below") and not J.relation_holds(b, a, "right of")
    # counting: the counted kind in another colour is a wrong colour, not a second kind
    s = Spec("counting", (Obj("circle", "red", 2),))
    p = W.layout(s, 0)
    assert J.check(s, J.detect(W.draw(p)))["all"]
    checks = J.check(s, J.detect(W.draw([p[0], dataclasses.replace(p[1], colour="blue")])), strict=False)
    assert not checks["count"] and not checks["colour"] and checks["present"]


def test_judge_classifies_each_shape_and_colour():
    for sh, c in itertools.product(W.SHAPES, W.COLOUR_NAMES):
        (d,) = J.detect(W.draw([Placement(sh, c, 30, 33)]))
        assert (d.shape, d.colour, d.iou) == (sh, c, 1.0)
        assert abs(d.x - 30) < 1.0 and abs(d.y - 33) < 3.0  # centroid, not box centre
    big = np.full((64, 64, 3), 255, np.uint8)
    big[10:40, 10:40] = COLOURS["red"]  # a 30×30 block is no object of the world
    assert [d.shape for d in J.detect(big)] == [J.UNKNOWN]
    speck = np.full((64, 64, 3), 255, np.uint8)
    speck[5:7, 5:9] = COLOURS["blue"]  # 8 px: noise, not an object
    assert J.detect(speck) == []


# --- builder, loader, processor ------------------------------------------------------------------------


def test_tfds_builder_read_by_the_train_loader(tmp_path):
    from janusflow_jax.data import MixSpec, TrainLoader
    from janusflow_jax.geneval import builder
    from janusflow_jax.processing import Processor

    src = {c: builder.build(str(tmp_path), c).as_data_source() for c in ("captions", "qa")}
    for c in ("captions", "qa"):
        assert (tmp_path / "geneval" / c / "1.3.0").is_dir() and set(src[c]) == {"train", "heldout"}
    n_train = sum(len(TRAIN[k]) * W.repeats_of(k, "train", 4, builder.DEFAULT_MIN_PER_KIND) for k in W.KINDS)
    assert len(src["captions"]["train"]) == n_train and len(src["captions"]["heldout"]) == len(W.specs("heldout"))
    by_key = {s.key: s for s in W.all_specs()}
    for c in ("captions", "qa"):
        for split in ("train", "heldout"):
            recs = src[c][split]
            for i in range(0, len(recs), 61):
                r = recs[i]
                s = by_key[r["spec"].decode()]
                assert r["task"].decode() == s.kind and W.is_heldout(s) == (split == "heldout")
                assert r["id"].decode().startswith(f"{split}/{s.key}/")
                assert J.judge(decode_png(r["image"]), s)  # every record's image satisfies its spec
                if c == "captions":
                    assert r["caption"].decode() in W.captions(s)
                else:
                    assert r["question_kind"].decode() in W.QUESTION_KINDS and r["answer"]
    assert builder.make_config("qa", repeats=2).name == "qa_r2"
    with pytest.raises(ValueError):
        builder.make_config("captions", train_seed=4, heldout_seed=4)
    proc = Processor(str(PROCESSOR_DIR))
    loader = TrainLoader(
        processor=proc, gen_source=src["captions"]["train"], und_source=src["qa"]["train"],
        mix=MixSpec(gen=4, und=4, text=0), gen_image_size=64, gen_prompt_len=24, und_len=128, text_len=8, seed=0,
    )  # fmt: skip
    batch = next(loader)
    assert batch["gen"]["image"].shape == (4, 64, 64, 3) and batch["und"]["ids"].shape == (4, 128)
    assert loader.skipped == {"gen": 0, "und": 0, "text": 0}
    u = batch["und"]
    answers = {proc.decode(u["ids"][i][u["loss_mask"][i] == 1]) for i in range(4)}
    assert answers <= set(W.corpus_strings())


def test_processor_folder_is_the_world_tokenizer(tmp_path):
    from janusflow_jax.geneval.tokenizer import train_tokenizer
    from janusflow_jax.processing import Processor

    train_tokenizer(str(tmp_path))
    names = sorted(p.name for p in PROCESSOR_DIR.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir()) and len(names) == 5
    for n in names:  # the shipped folder is up to date, byte for byte
        assert (tmp_path / n).read_bytes() == (PROCESSOR_DIR / n).read_bytes(), n
    proc = Processor(str(PROCESSOR_DIR))
    assert len(proc) <= 512  # fits the shapes model configs (vocab_size 512)
    ids = [proc.bos_id, proc.eos_id, proc.pad_id, proc.image_id, proc.image_start_id, proc.image_end_id]
    assert None not in ids and len(set(ids)) == 6
    cfg = json.loads((PROCESSOR_DIR / "tokenizer_config.json").read_text())
    added = cfg["added_tokens_decoder"]
    assert [int(i) for i in added] == [proc.tokenizer.token_to_id(t["content"]) for t in added.values()]
    tok = proc.tokenizer
    words = {w for s in W.corpus_strings() for w in re.findall(r"[a-z]+", s)}
    for w in words:  # every world word is one token after a space
        assert len(tok.encode(" " + w, add_special_tokens=False).ids) == 1, w
    longest = max((c for s in W.all_specs() for c in W.captions(s)), key=len)
    assert len(proc.encode(proc.generation_prompt(longest))) <= 24
    for s in W.all_specs()[::17]:
        for c in W.captions(s):
            assert proc.decode(proc.encode(c) + [proc.eos_id]) == c
