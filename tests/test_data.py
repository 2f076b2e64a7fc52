"""The training input pipeline: TFDS/ArrayRecord builders of local sources and the Grain TrainLoader."""

import io
import json
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from janusflow_jax.data import DataError, DataWarning, MixSpec, TrainLoader, resize_center_crop
from janusflow_jax.processing import Processor, sft_prompt

# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proc(tiny_dir):
    return Processor(str(tiny_dir))


def _png(color, size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), color, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _color(i):
    return (10 * i, 255 - 10 * i, (37 * i) % 256)


def _caught(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn()
    return out, [x for x in w if issubclass(x.category, DataWarning)]


def _write_lines(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((json.dumps(r) if isinstance(r, dict) else r) + "\n")


def _gen_records(n, size=(24, 16)):
    return [{"image": _png(_color(i), size), "caption": f"c{i}", "id": f"{i}.png"} for i in range(n)]


def _loader(proc, mix, *, gen=None, und=None, text=None, seed=0, p=0, P=1, threads=2, **kw):
    kw = dict(dict(gen_image_size=16, gen_prompt_len=40, und_len=260, text_len=24), **kw)
    return TrainLoader(
        processor=proc, gen_source=gen, und_source=und, text_source=text, mix=mix, seed=seed,
        process_index=p, process_count=P, num_threads=threads, **kw,
    )  # fmt: skip


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys()
        for f in a[k]:
            np.testing.assert_array_equal(a[k][f], b[k][f], err_msg=f"{k}.{f}")


def _caption(proc, prompt_ids, mask):
    text = proc.tokenizer.decode(prompt_ids[mask == 1].tolist(), skip_special_tokens=True)
    return text.split("User:")[1].split("\n\n")[0].strip()


# --- builders --------------------------------------------------------------------------------------


def test_image_caption_builder(tmp_path):
    from janusflow_jax.data import build, build_report

    src = tmp_path / "caps"
    src.mkdir()
    files = {f"{i}.png": _png(_color(i)) for i in range(4)} | {"j.jpg": _jpeg((200, 10, 10))}
    for name, data in files.items():
        (src / name).write_bytes(data)
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = [{"file": n, "caption": f" caption of {n} "} for n in files]
    rows[3]["split"] = "test"
    rows += [
        {"file": "corrupt.png", "caption": "x"},
        {"file": "0.png", "caption": "   "},
        {"file": "missing.png", "caption": "y"},
        "{not json",
    ]
    _write_lines(src / "captions.jsonl", rows)
    b, warned = _caught(lambda: build("image_caption", str(src), str(tmp_path / "ds")))
    assert len(warned) == 1
    msg = str(warned[0].message)
    assert "skipped 4 of 9" in msg and "corrupt.png" in msg and "missing.png" in msg
    rep = build_report(b)
    assert rep["kept"] == {"train": 4, "test": 1} and rep["skipped"] == 4 and rep["source"] == str(src)
    ds = b.as_data_source()
    got = {}
    for split, n in (("train", 4), ("test", 1)):
        assert len(ds[split]) == n
        for i in range(n):
            r = ds[split][i]
            got[r["id"].decode()] = r
    assert set(got) == set(files)
    for name, r in got.items():
        assert r["image"] == files[name]  # stored bytes, not re-encoded
        assert r["caption"].decode() == f"caption of {name}"
    assert ds["test"][0]["id"] == b"3.png"
    # idempotent: reused without rebuilding or warning; same name from another source is refused
    b2, warned = _caught(lambda: build("image_caption", str(src), str(tmp_path / "ds")))
    assert not warned and b2.data_path == b.data_path
    other = tmp_path / "other" / "caps"
    other.mkdir(parents=True)
    with pytest.raises(DataError, match="built from"):
        build("image_caption", str(other), str(tmp_path / "ds"))

    # TSV variant (header line, caption with a TAB kept)
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    (tsv / "a.png").write_bytes(files["0.png"])
    (tsv / "b.png").write_bytes(files["1.png"])
    (tsv / "captions.tsv").write_text("file\tcaption\na.png\tfirst\tpart\nb.png\t \nno_tab_line\n")
    b, warned = _caught(lambda: build("image_caption", str(tsv), str(tmp_path / "ds")))
    assert len(warned) == 1 and build_report(b)["skipped"] == 2
    (r,) = [b.as_data_source()["train"][0]]
    assert r["caption"].decode() == "first\tpart" and r["image"] == files["0.png"]


def test_image_qa_and_text_builders(tmp_path):
    from janusflow_jax.data import build, build_report

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png((1, 2, 3)))
    abs_png = tmp_path / "abs.png"
    abs_png.write_bytes(_png((4, 5, 6)))
    (tmp_path / "img" / "bad.png").write_bytes(b"garbage")
    _write_lines(
        tmp_path / "qa.jsonl",
        [
            {"image": "img/a.png", "question": "what?", "answer": "red"},
            {"image": str(abs_png), "question": "q2", "answer": "blue", "id": "abs", "split": "test"},
            {"image": "img/a.png", "question": "q3", "answer": " "},
            {"image": "img/bad.png", "question": "q4", "answer": "x"},
        ],
    )
    b, warned = _caught(lambda: build("image_qa", str(tmp_path / "qa.jsonl"), str(tmp_path / "ds")))
    assert len(warned) == 1 and "img/bad.png#L4" in str(warned[0].message)
    assert build_report(b)["kept"] == {"train": 1, "test": 1} and build_report(b)["skipped"] == 2
    ds = b.as_data_source()
    r = ds["train"][0]
    assert (r["question"], r["answer"], r["id"]) == (b"what?", b"red", b"img/a.png#L1")
    assert r["image"] == (tmp_path / "img" / "a.png").read_bytes()
    assert ds["test"][0]["id"] == b"abs" and ds["test"][0]["image"] == abs_png.read_bytes()

    (tmp_path / "docs.txt").write_text("first doc\n\n  second doc  \n")
    b, warned = _caught(lambda: build("text", str(tmp_path / "docs.txt"), str(tmp_path / "ds")))
    assert len(warned) == 1 and build_report(b)["skipped"] == 1
    assert sorted(r["text"] for r in b.as_data_source()["train"]) == [b"first doc", b"second doc"]
    _write_lines(tmp_path / "docs.jsonl", [{"text": "héllo"}, {"text": "wörld", "split": "test"}])
    b, warned = _caught(lambda: build("text", str(tmp_path / "docs.jsonl"), str(tmp_path / "ds"), name="docs_jsonl"))
    assert not warned and b.as_data_source()["test"][0]["text"].decode() == "wörld"


def test_builder_errors(tmp_path):
    from janusflow_jax.data import build

    missing = tmp_path / "nope"
    for kind in ("image_caption", "image_qa", "text"):
        with pytest.raises(DataError, match=re.escape(str(missing))):
            build(kind, str(missing), str(tmp_path / "ds"))
    (tmp_path / "allbad.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="allbad.txt"):
        build("text", str(tmp_path / "allbad.txt"), str(tmp_path / "ds"))
    assert not (tmp_path / "ds" / "text_only" / "allbad" / "1.0.0").exists()
    with pytest.raises(DataError, match="unknown dataset kind"):
        build("video", str(tmp_path), str(tmp_path / "ds"))


def test_train_config_data_kinds_are_the_builders_plus_shapes_and_tfds():
    from janusflow_jax.data import BUILDERS
    from janusflow_jax.training.config import load_config
    from janusflow_jax.training.data_sources import SOURCE_KINDS
    from janusflow_jax.training.state import TrainConfigError

    assert set(SOURCE_KINDS) == set(BUILDERS) | {"shapes", "geneval", "tfds"}
    base = ["model.init_from=default", "data.mix.gen=2", "data.mix.und=0", "data.mix.text=0"]
    for kind in SOURCE_KINDS:
        assert load_config(None, base + [f"data.gen.kind={kind}"]).data.gen.kind == kind
    with pytest.raises(
        TrainConfigError, match=r"data.gen.kind: unknown kind 'caption_folder'; one of \['geneval', 'image_caption'"
    ):
        load_config(None, base + ["data.gen.kind=caption_folder"])


def test_world_sources_take_repeats(monkeypatch):
    """data.<role>.repeats reaches the world builder (0 → its default); other kinds refuse it."""
    from janusflow_jax.geneval import builder as geneval_builder
    from janusflow_jax.training import data_sources
    from janusflow_jax.training.config import load_config
    from janusflow_jax.training.state import TrainConfigError

    calls = []

    class _Built:
        def as_data_source(self):
            return {"train": ["rec"]}

    def fake_build(data_dir, config, **kw):
        calls.append((config, kw))
        return _Built()

    monkeypatch.setattr(geneval_builder, "build", fake_build)
    base = ["model.init_from=default", "data.mix.gen=0", "data.mix.und=2", "data.mix.text=0", "data.und.kind=geneval"]
    for arg, want in (([], None), (["data.und.repeats=8"], 8)):
        cfg = load_config(None, base + arg)
        assert data_sources._source(cfg.data.und, "und", "unused", build=True) == ["rec"]
        assert calls[-1] == ("qa", {"build": True, "repeats": want})
    with pytest.raises(TrainConfigError, match=r"data.und.repeats: only the shapes/geneval worlds .* 'image_qa'"):
        load_config(None, base + ["data.und.kind=image_qa", "data.und.repeats=2"])
    with pytest.raises(TrainConfigError, match=r"data.und.repeats must be >= 0"):
        load_config(None, base + ["data.und.repeats=-1"])


# --- loader ----------------------------------------------------------------------------------------


def test_batch_layout(proc, tmp_path):
    n = 5
    gen = _gen_records(n)
    und = [{"image": _png(_color(i)), "question": f"q{i}?", "answer": f"ans {i}"} for i in range(n)]
    text = [{"text": f"doc {i}"} for i in range(n)]
    loader = _loader(proc, MixSpec(gen=2, und=3, text=2), gen=gen, und=und, text=text)
    batch = next(loader)
    assert set(batch) == {"gen", "und", "text"}
    g, u, t = batch["gen"], batch["und"], batch["text"]
    S = proc.image_size
    shapes = {
        ("gen", "prompt_ids"): ((2, 40), np.int32), ("gen", "prompt_mask"): ((2, 40), np.int32),
        ("gen", "image"): ((2, 16, 16, 3), np.uint8),
        ("und", "ids"): ((3, 260), np.int32), ("und", "mask"): ((3, 260), np.int32),
        ("und", "loss_mask"): ((3, 260), np.float32), ("und", "pixel_values"): ((3, S, S, 3), np.float32),
        ("und", "images_seq_mask"): ((3, 260), np.bool_),
        ("text", "ids"): ((2, 24), np.int32), ("text", "mask"): ((2, 24), np.int32),
        ("text", "loss_mask"): ((2, 24), np.float32),
    }  # fmt: skip
    assert {(k, f) for k in batch for f in batch[k]} == set(shapes)
    for (k, f), (shape, dtype) in shapes.items():
        assert batch[k][f].shape == shape and batch[k][f].dtype == dtype, (k, f)

    for row in range(2):  # gen: left-padded prompt ending with the image start tag; image matches caption
        ids, mask = g["prompt_ids"][row], g["prompt_mask"][row]
        i = int(_caption(proc, ids, mask)[1:])
        want = proc.encode(proc.generation_prompt(f"c{i}"))
        assert ids[-1] == proc.image_start_id and mask.sum() == len(want)
        np.testing.assert_array_equal(ids[-len(want) :], want)
        assert (ids[: -len(want)] == proc.pad_id).all() and (mask[: -len(want)] == 0).all()
        np.testing.assert_array_equal(g["image"][row], np.broadcast_to(np.uint8(_color(i)), (16, 16, 3)))

    for row in range(3):  # und: right-padded; loss on " answer" + EOS; image slots
        ids, mask, loss = u["ids"][row], u["mask"][row], u["loss_mask"][row]
        n_real = int(mask.sum())
        assert (mask[:n_real] == 1).all() and (ids[n_real:] == proc.pad_id).all() and ids[n_real - 1] == proc.eos_id
        answer = proc.decode(ids[loss == 1]).strip()
        i = int(answer.split()[1])
        assert answer == f"ans {i}" and ids[loss == 1][-1] == proc.eos_id
        # the sequence is the tokenisation of the official full conversation, image slots expanded
        conv = proc.understanding_conversation(f"q{i}?")
        full = proc._expand(proc.encode(sft_prompt([conv[0], {"role": conv[1]["role"], "content": f"ans {i}"}])))
        np.testing.assert_array_equal(ids[:n_real], full)
        first_loss = int(np.argmax(loss))
        assert proc.tokenizer.decode(ids[:first_loss].tolist()).endswith("Assistant:")
        seq = u["images_seq_mask"][row]
        assert seq.sum() == 1 + proc.num_image_tokens and ids[np.argmax(seq)] == proc.image_start_id
        assert (ids[seq][1:] == proc.image_id).all()
        ref = proc.preprocess_image(np.full((16, 24, 3), _color(i), np.uint8))
        np.testing.assert_allclose(u["pixel_values"][row], ref, atol=1e-6)

    for row in range(2):  # text: BOS doc EOS, loss on all real tokens but BOS
        ids, mask, loss = t["ids"][row], t["mask"][row], t["loss_mask"][row]
        i = int(proc.decode(ids).split()[1])
        want = proc.encode(f"doc {i}") + [proc.eos_id]
        np.testing.assert_array_equal(ids[: len(want)], want)
        assert (ids[len(want) :] == proc.pad_id).all() and mask.sum() == len(want)
        np.testing.assert_array_equal(loss, np.r_[0.0, np.ones(len(want) - 1), np.zeros(24 - len(want))])

    only_text = next(_loader(proc, MixSpec(gen=0, und=0, text=1), text=text))
    assert set(only_text) == {"text"}


def test_resize_center_crop(proc):
    img = np.zeros((64, 96, 3), np.uint8)  # W=96, H=64: coloured left third
    img[:, :32] = (255, 0, 0)
    img[:, 32:] = (0, 0, 255)
    out = resize_center_crop(img, 32)  # → 48×32, centre crop x ∈ [8, 40): red for x' < 8 (orig x < 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[:, :6] == (255, 0, 0)).all() and (out[:, 10:] == (0, 0, 255)).all()
    ref = np.asarray(Image.fromarray(img).resize((48, 32), Image.Resampling.BICUBIC))[:, 8:40]
    np.testing.assert_array_equal(out, ref)
    tall = resize_center_crop(img.transpose(1, 0, 2), 32)  # H=96, W=64: crop y ∈ [8, 40), red on top
    assert (tall[:6] == (255, 0, 0)).all() and (tall[10:] == (0, 0, 255)).all()
    # through the loader (encoded PNG)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    batch = next(_loader(proc, MixSpec(gen=1, und=0, text=0), gen=[{"image": buf.getvalue(), "caption": "x"}],
                         gen_image_size=32))  # fmt: skip
    np.testing.assert_array_equal(batch["gen"]["image"][0], ref)


def test_determinism_resume_and_process_slices(proc):
    gen = _gen_records(7)
    text = [{"text": f"t{i}"} for i in range(5)]
    mix = MixSpec(gen=4, und=0, text=2)
    ref = _take(_loader(proc, mix, gen=gen, text=text, seed=3), 6)
    for a, b in zip(ref, _take(_loader(proc, mix, gen=gen, text=text, seed=3, threads=0), 6)):
        _assert_batches_equal(a, b)
    other = _take(_loader(proc, mix, gen=gen, text=text, seed=4), 6)
    assert any(not np.array_equal(a["gen"]["prompt_ids"], b["gen"]["prompt_ids"]) for a, b in zip(ref, other))

    # resume mid-stream (prefetch in flight) on a fresh loader
    first = _loader(proc, mix, gen=gen, text=text, seed=3)
    _take(first, 2)
    state = json.loads(json.dumps(first.get_state()))
    assert state["position"] == {"gen": 8, "text": 4}
    _take(first, 1)  # further progress of the old loader does not matter
    resumed = _loader(proc, mix, gen=gen, text=text, seed=3)
    resumed.set_state(state)
    assert resumed.get_state() == state
    for a, b in zip(ref[2:], _take(resumed, 4)):
        _assert_batches_equal(a, b)
    first.set_state(state)  # also on a loader that already ran
    _assert_batches_equal(ref[2], next(first))
    with pytest.raises(DataError, match="seed"):
        _loader(proc, mix, gen=gen, text=text, seed=5).set_state(state)

    # 2 processes: contiguous slices of the global batch, concatenated in process order
    parts = [_take(_loader(proc, mix, gen=gen, text=text, seed=3, p=p, P=2), 6) for p in range(2)]
    for step in range(6):
        for k in ("gen", "text"):
            for f in ref[step][k]:
                got = np.concatenate([parts[p][step][k][f] for p in range(2)])
                np.testing.assert_array_equal(got, ref[step][k][f], err_msg=f"step {step} {k}.{f}")
    with pytest.raises(DataError, match="divisible"):
        _loader(proc, MixSpec(gen=3, und=0, text=0), gen=gen, P=2)
    with pytest.raises(DataError, match="no und_source"):
        _loader(proc, MixSpec(gen=0, und=2, text=0))


def test_epochs_are_permutations(proc):
    n = 6
    loader = _loader(proc, MixSpec(gen=n, und=0, text=0), gen=_gen_records(n), seed=11)
    orders = []
    for batch in _take(loader, 4):  # B = N: step s is exactly epoch s
        g = batch["gen"]
        orders.append([int(_caption(proc, g["prompt_ids"][r], g["prompt_mask"][r])[1:]) for r in range(n)])
    for order in orders:
        assert sorted(order) == list(range(n))
    assert len({tuple(o) for o in orders}) == 4


def test_read_time_skips(proc):
    recs = _gen_records(8)
    recs[1]["image"] = b"\x89PNG corrupt"
    recs[3]["caption"] = "  "
    del recs[5]["image"]
    loader = _loader(proc, MixSpec(gen=8, und=0, text=0), gen=recs, seed=1)
    batches, warned = _caught(lambda: _take(loader, 3))
    assert len(warned) == 1 and "gen" in str(warned[0].message)
    assert loader.skipped == {"gen": 9, "und": 0, "text": 0}  # each bad record once per epoch
    for batch in batches:  # bad records replaced by their successors in the source
        g = batch["gen"]
        caps = sorted(int(_caption(proc, g["prompt_ids"][r], g["prompt_mask"][r])[1:]) for r in range(8))
        assert caps == [0, 2, 2, 4, 4, 6, 6, 7]
    assert loader.get_state()["skipped"]["gen"] == 9

    bad = [{"image": b"nope", "caption": "c"}, {"image": _png((1, 1, 1)), "caption": ""}]
    with pytest.raises(DataError, match="no usable gen record"):
        next(_loader(proc, MixSpec(gen=1, und=0, text=0), gen=bad))


def test_loader_reads_tfds_sources(proc, tmp_path):
    from janusflow_jax.data import build

    folder = tmp_path / "shapes"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(_color(i), (40, 20)))
    _write_lines(folder / "captions.jsonl", [{"file": f"{i}.png", "caption": f"c{i}"} for i in range(3)])
    _write_lines(tmp_path / "qa.jsonl", [{"image": "shapes/0.png", "question": "what?", "answer": "red"}])
    (tmp_path / "docs.txt").write_text("hello\nworld\n")
    inputs = {"image_caption": folder, "image_qa": tmp_path / "qa.jsonl", "text": tmp_path / "docs.txt"}
    srcs = {k: build(k, str(path), str(tmp_path / "ds")).as_data_source()["train"] for k, path in inputs.items()}
    mix = MixSpec(gen=3, und=1, text=2)
    loader = _loader(proc, mix, gen=srcs["image_caption"], und=srcs["image_qa"], text=srcs["text"])
    batch = next(loader)
    g = batch["gen"]
    for r in range(3):
        i = int(_caption(proc, g["prompt_ids"][r], g["prompt_mask"][r])[1:])
        np.testing.assert_array_equal(g["image"][r], np.broadcast_to(np.uint8(_color(i)), (16, 16, 3)))
    u = batch["und"]
    assert proc.decode(u["ids"][0][u["loss_mask"][0] == 1]).strip() == "red"
    assert sorted(proc.decode(x).lstrip() for x in batch["text"]["ids"]) == ["hello", "world"]
    assert loader.skipped == {"gen": 0, "und": 0, "text": 0}


# --- truncation of over-long records ---------------------------------------------------------------


def _cut_warnings(warned, kind):
    return [str(w.message) for w in warned if f"truncating over-long {kind}" in str(w.message)]


def test_overlong_caption_is_truncated(proc):
    caption = "a long caption about a red cube on a blue floor under a grey sky"
    recs = [{"image": _png(_color(0)), "caption": caption, "id": "long.png"}]
    template = len(proc.encode(proc.generation_prompt("x"))) - 1
    assert len(proc.encode(proc.generation_prompt(caption))) > 32 > template + 1
    loader = _loader(proc, MixSpec(gen=2, und=0, text=0), gen=recs, gen_prompt_len=32)
    batches, warned = _caught(lambda: _take(loader, 3))
    for batch in batches:
        g = batch["gen"]
        assert g["prompt_ids"].shape == (2, 32)
        for ids, mask in zip(g["prompt_ids"], g["prompt_mask"]):
            assert mask.sum() == 32 and ids[-1] == proc.image_start_id and ids[0] == proc.bos_id
            kept = _caption(proc, ids, mask)
            assert len(kept) >= 32 - template - 1 and caption.startswith(kept)  # the FIRST tokens survive
            np.testing.assert_array_equal(ids, proc.encode(proc.generation_prompt(kept)))
    assert loader.truncated == {"gen": 6, "und": 0, "text": 0} and loader.skipped["gen"] == 0
    cuts = _cut_warnings(warned, "gen")
    assert len(cuts) == 1 and len(warned) == 1  # one warning for the whole run, not one per row
    assert "long.png (index 0)" in cuts[0] and f"to {len(kept)} tokens" in cuts[0] and "gen_prompt_len 32" in cuts[0]
    state = json.loads(json.dumps(loader.get_state()))
    assert state["truncated"]["gen"] == 6
    resumed = _loader(proc, MixSpec(gen=2, und=0, text=0), gen=recs, gen_prompt_len=32)
    resumed.set_state(state)
    assert resumed.truncated["gen"] == 6 and resumed.get_state() == state
    batch, warned = _caught(lambda: next(resumed))
    _assert_batches_equal(batch, batches[0])
    assert len(_cut_warnings(warned, "gen")) == 1 and resumed.truncated["gen"] == 8
    legacy = {k: v for k, v in state.items() if k != "truncated"}  # a state written before truncation existed
    resumed.set_state(legacy)
    assert resumed.truncated == {"gen": 0, "und": 0, "text": 0}

    # a short caption is untouched and not counted
    short = _loader(proc, MixSpec(gen=1, und=0, text=0), gen=_gen_records(1), gen_prompt_len=32)
    batch, warned = _caught(lambda: next(short))
    assert not warned and short.truncated["gen"] == 0 and batch["gen"]["prompt_mask"].sum() == template + 2


def test_overlong_question_is_truncated_answer_and_image_kept(proc):
    question = "what colour is the large cube standing in the middle of the picture?"
    rec = {"image": _png(_color(3)), "question": question, "answer": "ans 3", "id": "qa1"}
    full = proc._expand(proc.encode(sft_prompt(proc.understanding_conversation(question))))
    L = len(full) - 20
    loader = _loader(proc, MixSpec(gen=0, und=1, text=0), und=[rec], und_len=L)
    batch, warned = _caught(lambda: next(loader))
    u = batch["und"]
    ids, mask, loss, seq = u["ids"][0], u["mask"][0], u["loss_mask"][0], u["images_seq_mask"][0]
    assert ids.shape == (L,) and mask.sum() == L and ids[-1] == proc.eos_id
    assert proc.decode(ids[loss == 1]).strip() == "ans 3" and ids[loss == 1][-1] == proc.eos_id
    assert seq.sum() == 1 + proc.num_image_tokens and (ids[seq][1:] == proc.image_id).all()
    assert ids[np.argmax(seq)] == proc.image_start_id
    text = proc.tokenizer.decode(ids[: int(np.argmax(loss))].tolist(), skip_special_tokens=True)
    kept = text.split("User:")[1].split("\n\nAssistant:")[0].strip()
    assert kept and question.startswith(kept) and len(kept) < len(question)
    conv = proc.understanding_conversation(kept)
    want = proc._expand(proc.encode(sft_prompt([conv[0], {"role": conv[1]["role"], "content": "ans 3"}])))
    np.testing.assert_array_equal(ids, want)  # the official conversation of the shortened question
    assert loader.truncated == {"gen": 0, "und": 1, "text": 0} and loader.skipped["und"] == 0
    cuts = _cut_warnings(warned, "und")
    assert len(cuts) == 1 and "qa1 (index 0)" in cuts[0] and "question cut" in cuts[0]


def test_overlong_text_is_truncated(proc):
    doc = " ".join(f"word{i}" for i in range(30))
    loader = _loader(proc, MixSpec(gen=0, und=0, text=1), text=[{"text": doc}], text_len=24)
    batch, warned = _caught(lambda: next(loader))
    t = batch["text"]
    np.testing.assert_array_equal(t["ids"][0], proc.encode(doc)[:24])  # BOS + the first 23 tokens, no EOS
    assert proc.eos_id not in t["ids"][0] and t["mask"][0].sum() == 24
    np.testing.assert_array_equal(t["loss_mask"][0], np.r_[0.0, np.ones(23)])
    assert proc.decode(t["ids"][0]) == doc[:23]
    assert loader.truncated == {"gen": 0, "und": 0, "text": 1}
    assert len(_cut_warnings(warned, "text")) == 1 and "text_len 24" in _cut_warnings(warned, "text")[0]


def test_records_that_cannot_fit_are_still_skipped(proc):
    template = len(proc.encode(proc.generation_prompt("x"))) - 1  # BOS, template, image start tag
    recs = [{"image": _png(_color(0)), "caption": "far too long", "id": "a"}]
    with pytest.raises(DataError, match="no usable gen record.*even with 1 caption token"):
        next(_loader(proc, MixSpec(gen=1, und=0, text=0), gen=recs, gen_prompt_len=template))
    batch, warned = _caught(lambda: next(_loader(proc, MixSpec(gen=1, und=0, text=0), gen=recs,
                                                 gen_prompt_len=template + 1)))  # fmt: skip
    assert "caption cut from 12 to 1 tokens" in _cut_warnings(warned, "gen")[0]
    assert proc.tokenizer.decode(batch["gen"]["prompt_ids"][0].tolist(), skip_special_tokens=True).endswith(
        "User: f\n\nAssistant:"
    )

    # und: the answer + image + template do not fit -> skipped (the next good record substitutes)
    base = len(proc._expand(proc.encode(sft_prompt(proc.understanding_conversation("q")))))
    long_answer = "an answer that is much longer than the room left"
    und = [
        {"image": _png(_color(1)), "question": "q1", "answer": long_answer, "id": "toolong"},
        {"image": _png(_color(2)), "question": "q2", "answer": "ok"},
    ]
    L = base + 8
    loader = _loader(proc, MixSpec(gen=0, und=2, text=0), und=und, und_len=L)
    batch, warned = _caught(lambda: next(loader))
    u = batch["und"]
    assert [proc.decode(ids[lm == 1]).strip() for ids, lm in zip(u["ids"], u["loss_mask"])] == ["ok", "ok"]
    assert loader.skipped["und"] == 1 and loader.truncated["und"] == 0
    msgs = [str(w.message) for w in warned]
    assert len(msgs) == 1 and "skipping bad und" in msgs[0] and "toolong (index 0)" in msgs[0]
    assert f"und_len {L} even with 1 question token" in msgs[0]
