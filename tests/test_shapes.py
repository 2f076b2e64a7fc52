"""The synthetic shapes world: attributes, rendering, captions/QA, splits, source writers, the judge,
the TFDS `shapes` builder and the world tokenizer."""

import json
import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image, ImageFilter

from janusflow_jax.shapes import world
from janusflow_jax.shapes.judge import accuracy, analyse, judge, score
from janusflow_jax.shapes.world import Attributes

ALL = world.all_combinations()


# --- world ------------------------------------------------------------------------------------------


def test_combinations_and_attributes():
    assert len(ALL) == len(set(ALL)) == 540
    assert {f: {getattr(a, f) for a in ALL} for f in world.FIELDS} == {f: set(v) for f, v in world.VALUES.items()}
    with pytest.raises(ValueError):
        Attributes("circle", "grey", "small", "center", "white")
    a = Attributes("circle", "red", "large", "top left", "white")
    assert a.caption() == "a large red circle in the top left on a white background"
    assert Attributes("square", "blue", "small", "center", "gray").caption() == (
        "a small blue square in the center on a gray background"
    )
    assert a.qa() == [
        ("what shape is in the image?", "circle"),
        ("what color is the shape?", "red"),
        ("where is the shape?", "top left"),
        ("what color is the background?", "white"),
        ("is the shape small or large?", "large"),
    ]
    assert a.paraphrases()[0] == "red circle, large, top left, white background"
    assert len(set(a.paraphrases())) == len(world.PARAPHRASES) >= 3 and a.caption() not in a.paraphrases()


def test_captions_and_answers_match_attributes():
    for a in ALL:
        cap = a.caption()
        assert cap == f"a {a.size} {a.colour} {a.shape} in the {a.position} on a {a.background} background"
        for text in (cap, *a.paraphrases()):
            for f in world.FIELDS:
                assert getattr(a, f) in text
        qa = dict(a.qa())
        assert list(qa.values()) == [a.shape, a.colour, a.position, a.background, a.size]
        for ans in qa.values():
            assert ans == ans.lower() and re.fullmatch(r"[a-z ]+", ans)


def test_render_exact_geometry():
    for a in ALL[::7] + [Attributes("square", "red", "large", "bottom right", "gray")]:
        img = world.render(a)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        colours = {tuple(c) for c in img.reshape(-1, 3)}
        assert colours == {world.COLOURS[a.colour], world.BACKGROUNDS[a.background]}  # no anti-aliasing
        fg = np.all(img == world.COLOURS[a.colour], axis=-1)
        ys, xs = np.nonzero(fg)
        box, (cx, cy) = world.SIZES[a.size], world.POSITIONS[a.position]
        assert (xs.min(), xs.max()) == (cx - box // 2, cx + box // 2 - 1)  # fits the box, spans its width
        assert ys.max() == cy + box // 2 - 1 and ys.min() >= cy - box // 2
        area = {"square": box * box, "circle": np.pi * box * box / 4, "triangle": box * box / 2}[a.shape]
        assert abs(fg.sum() - area) / area < 0.05
    tri = world.render(Attributes("triangle", "red", "small", "center", "white"))
    rows = np.all(tri == world.COLOURS["red"], axis=-1).sum(axis=1)
    assert list(rows[25:40]) == sorted(rows[25:40]) and rows[39] == 16  # apex up, horizontal base


def test_splits():
    train, heldout = world.split_combinations()
    assert set(train).isdisjoint(heldout) and set(train) | set(heldout) == set(ALL)
    assert world.split_combinations() == (train, heldout)  # deterministic
    assert 0.13 <= len(heldout) / 540 <= 0.17
    trs = set(train)
    for f in world.FIELDS:
        assert {getattr(a, f) for a in train} == set(world.VALUES[f])
    for i, f in enumerate(world.FIELDS):  # every pair of attribute values appears in training
        for g in world.FIELDS[i + 1 :]:
            assert len({(getattr(a, f), getattr(a, g)) for a in train}) == len(world.VALUES[f]) * len(world.VALUES[g])
    for h in heldout:  # every one-attribute change of a held-out combination is a training one
        for f in world.FIELDS:
            for v in world.VALUES[f]:
                if v != getattr(h, f):
                    assert Attributes(**{**h.as_dict(), f: v}) in trs


def test_examples_seeds_and_captions():
    tr = world.examples("train", repeats=4)
    ho = world.examples("heldout")
    train, heldout = world.split_combinations()
    assert len(tr) == 4 * len(train) and len(ho) == len(heldout)
    assert {e.attrs for e in tr} == set(train) and {e.attrs for e in ho} == set(heldout)
    assert {e.seed for e in tr}.isdisjoint({e.seed for e in ho})
    canonical = sum(e.caption == e.attrs.caption() for e in tr)
    assert canonical > len(tr) / 2 and canonical < len(tr)  # canonical is the main form, paraphrases used
    assert all(e.caption in [e.attrs.caption(), *e.attrs.paraphrases()] for e in tr)
    assert all(e.caption == e.attrs.caption() for e in ho)
    assert all(sorted(e.qa) == sorted(e.attrs.qa()) for e in tr)
    assert [e.id for e in world.examples("train", repeats=4)] == [e.id for e in tr]
    assert [e.caption for e in world.examples("train", seed=5, repeats=4)] != [e.caption for e in tr]


def _files(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def test_write_sources_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        world.write_all_sources(str(d), repeats=2)
    assert _files(a) == _files(b)
    for f in _files(a):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    caps = [json.loads(x) for x in (a / "captions.jsonl").read_text().splitlines()]
    qa = [json.loads(x) for x in (a / "qa.jsonl").read_text().splitlines()]
    train, heldout = world.split_combinations()
    assert sum(r["split"] == "train" for r in caps) == 2 * len(train)
    assert sum(r["split"] == "heldout" for r in caps) == len(heldout)
    assert len(qa) == 5 * len(caps)
    seeds = {s: {r["seed"] for r in caps if r["split"] == s} for s in ("train", "heldout")}
    assert seeds["train"].isdisjoint(seeds["heldout"])
    assert json.loads((a / "sources.json").read_text())["heldout"]["seed"] == world.HELDOUT_SEED != world.TRAIN_SEED
    for r in caps[:40]:
        attrs = Attributes(**{f: r[f] for f in world.FIELDS})
        assert r["caption"] in [attrs.caption(), *attrs.paraphrases()]
        assert world.is_heldout(attrs) == (r["split"] == "heldout")
        img = np.asarray(Image.open(a / r["file"]))
        assert np.array_equal(img, world.render(attrs))
    for r in qa[:40]:
        attrs = Attributes(**{f: r[f] for f in world.FIELDS})
        assert (r["question"], r["answer"]) in attrs.qa()
    with pytest.raises(ValueError, match="already used"):
        world.write_sources(str(a), split="heldout", seed=world.TRAIN_SEED, append=True)


# --- judge --------------------------------------------------------------------------------------------


def test_judge_all_combinations_exact_and_jittered():
    preds = [judge(world.render(a)) for a in ALL]
    assert preds == ALL
    assert accuracy(preds, ALL)["all"] == 1.0
    for a in ALL[::3]:  # the ±1 px jitter keeps the spec (and the judge) true
        assert judge(world.render(a, jitter_seed=11)) == a
    offsets = {world.jitter_offset(s, a) for s in range(3) for a in ALL[:30]}
    assert offsets <= {(x, y) for x in (-1, 0, 1) for y in (-1, 0, 1)} and len(offsets) > 1


def test_judge_robust_to_noise_blur_specks():
    rng = np.random.default_rng(0)
    for a in ALL[::4]:
        img = world.render(a)
        noisy = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        blur = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.0)))
        both = np.clip(blur + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        speck = img.copy()
        for _ in range(5):
            y, x = rng.integers(0, 62, 2)
            speck[y : y + 2, x : x + 2] = rng.integers(0, 256, 3)
        for kind, im in (("noise", noisy), ("blur", blur), ("blur+noise", both), ("specks", speck)):
            assert judge(im) == a, (kind, a, analyse(im))


def test_judge_edge_cases_and_score():
    empty = np.full((64, 64, 3), 128, np.uint8)
    p = judge(empty)
    assert p.background == "gray" and p.shape == world.UNKNOWN and not p.valid
    a = Attributes("circle", "red", "large", "top left", "white")
    big = np.asarray(Image.fromarray(world.render(a)).resize((128, 128), Image.Resampling.NEAREST))
    assert judge(big) == a
    s = score(Attributes("square", "red", "large", "top left", "white"), a)
    assert s == {"shape": False, "colour": True, "size": True, "position": True, "background": True, "all": False}
    assert score(a, a)["all"]


# --- TFDS builder -------------------------------------------------------------------------------------


def test_tfds_builder_both_configs(tmp_path):
    from janusflow_jax.shapes import builder

    train, heldout = world.split_combinations()
    seen = {}
    for config in ("captions", "qa"):
        b = builder.build(str(tmp_path), config)
        assert os.path.isdir(os.path.join(str(tmp_path), "shapes", config, "1.0.0"))
        src = b.as_data_source()
        assert set(src) == {"train", "heldout"}
        n = 1 if config == "captions" else 5
        assert len(src["train"]) == n * builder.DEFAULT_REPEATS[config] * len(train)
        assert len(src["heldout"]) == n * len(heldout)
        for split in ("train", "heldout"):
            recs = [src[split][i] for i in range(0, len(src[split]), 37)]
            for r in recs:
                attrs = Attributes(**{f: r[f].decode() for f in world.FIELDS})
                assert world.is_heldout(attrs) == (split == "heldout")
                assert np.array_equal(world.decode_png(r["image"]), world.render(attrs))
                if config == "captions":
                    assert r["caption"].decode() in [attrs.caption(), *attrs.paraphrases()]
                else:
                    assert (r["question"].decode(), r["answer"].decode()) in attrs.qa()
                assert r["id"].decode().startswith(split + "/")
        seen[config] = src["train"][0]
        assert builder.build(str(tmp_path), config).as_data_source()["train"][0]["id"] == seen[config]["id"]  # reused
    assert {"image", "caption", "id"} <= set(seen["captions"]) and {"image", "question", "answer"} <= set(seen["qa"])
    # a variant builds into its own folder, deterministically
    v1 = builder.build(str(tmp_path / "x"), "captions", repeats=1)
    v2 = builder.build(str(tmp_path / "y"), "captions", repeats=1)
    assert v1.builder_config.name == "captions_r1"
    s1, s2 = v1.as_data_source()["train"], v2.as_data_source()["train"]
    assert len(s1) == len(train) and all(s1[i] == s2[i] for i in range(0, len(s1), 50))
    with pytest.raises(ValueError):
        builder.make_config("qa", train_seed=3, heldout_seed=3)


# --- tokenizer ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_processor(tmp_path_factory):
    from janusflow_jax.processing import Processor
    from janusflow_jax.shapes.tokenizer import train_tokenizer

    d = str(tmp_path_factory.mktemp("shapes_tok"))
    train_tokenizer(d, num_image_tokens=64, image_size=64)
    return Processor(d)


def test_tokenizer_files_and_special_ids(shapes_processor, tmp_path):
    from janusflow_jax.shapes.tokenizer import train_tokenizer

    p = shapes_processor
    names = (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "processor_config.json",
        "preprocessor_config.json",
    )
    train_tokenizer(str(tmp_path), num_image_tokens=64, image_size=64)
    for n in names:  # deterministic, byte for byte
        assert (tmp_path / n).read_bytes() == (pathlib.Path(p.folder) / n).read_bytes(), n
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "janusflow-tiny")
    for n in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        with open(os.path.join(fixture, n)) as f:
            assert set(json.loads((tmp_path / n).read_text())) == set(json.load(f)), n
    ids = [p.bos_id, p.eos_id, p.pad_id, p.image_id, p.image_start_id, p.image_end_id, p.image_gen_id]
    assert None not in ids and len(set(ids)) == 7
    assert p.num_image_tokens == 64 and p.image_size == 64 and p.roles == ("User", "Assistant")
    assert np.allclose(p.image_mean, 0.5) and np.allclose(p.image_std, 0.5)
    assert len(p) < 600
    assert p.encode("a")[0] == p.bos_id


def test_tokenizer_covers_world_and_round_trips(shapes_processor):
    from janusflow_jax.processing import sft_prompt
    from janusflow_jax.shapes.tokenizer import prompt_texts

    p = shapes_processor
    tok = p.tokenizer
    vocab = tok.get_vocab()
    words = set()
    for s in world.corpus_strings():
        words.update(re.findall(r"[a-z]+", s))
    for wd in words:  # every world word is one whole token (after a space; and at a string start)
        assert len(tok.encode(" " + wd, add_special_tokens=False).ids) == 1, wd
    for s in world.corpus_strings():
        assert len(tok.encode(s.split()[0], add_special_tokens=False).ids) == 1, s
    for text in prompt_texts():
        enc = tok.encode(text, add_special_tokens=False)
        assert all(t in vocab for t in enc.tokens)
        # lossless, except the ONE leading space the decoder strips (answers are encoded as " " + answer)
        assert tok.decode(enc.ids, skip_special_tokens=False) == text.removeprefix(" ")
    for a in ALL[::5]:
        for s in (a.caption(), *a.paraphrases()):
            assert p.decode(p.encode(s) + [p.eos_id]) == s
        for _, ans in a.qa():  # the answer form of the training pipeline
            ids = tok.encode(" " + ans, add_special_tokens=False).ids
            assert len(ids) == len(ans.split())
            assert p.decode(ids + [p.eos_id, 5, 6]) == ans
    out = p.encode_understanding([world.render(ALL[0])], ["what shape is in the image?"])
    ids = out["input_ids"][0].tolist()
    assert ids.count(p.image_id) == 64 and ids.count(p.image_start_id) == 1
    assert out["pixel_values"].shape == (1, 1, 64, 64, 3)
    gen = p.encode(p.generation_prompt(ALL[0].caption()))
    assert gen[0] == p.bos_id and gen[-1] == p.image_start_id
    conv = p.understanding_conversation("where is the shape?")
    assert p.decode(p.encode(sft_prompt(conv))).endswith("where is the shape?\n\nAssistant:")
