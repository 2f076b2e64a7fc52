"""janusflow-sample end to end on a tiny checkpoint folder in the official layout, with a tokenizer
trained here with `tokenizers`; and its bad inputs (one clear line, exit code 2)."""

import io
import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_DIR
from sample.cli import main

SPECIALS = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜▁pad▁｜>",
    "<image_placeholder>",
    "<image_beg>",
    "<image_end>",
    "<｜begin▁of▁generation｜>",
]


def _train_tokenizer(folder):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=262, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(
        ["a red cube on a blue floor", "what shape is in the image", "a large green circle"] * 20, trainer
    )
    bos = tok.token_to_id(SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIALS[0]} $A", special_tokens=[(SPECIALS[0], bos)])
    assert tok.get_vocab_size() <= 272  # fits the tiny model's embedding table
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": SPECIALS[0],
                "eos_token": SPECIALS[1],
                "pad_token": SPECIALS[2],
                "tokenizer_class": "LlamaTokenizer",
            }
        )
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "pad_token": SPECIALS[2]})
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "janusflow-tiny-bpe"
    shutil.copytree(
        TINY_DIR, d, ignore=shutil.ignore_patterns("*.npz", "manifest.json", "tokenizer*", "special_tokens_map.json")
    )
    for p in d.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    _train_tokenizer(d)
    return d


def _run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def restore_compile_cache():
    """`--compile-cache` sets JAX's process-wide persistent cache; in-process CLI tests must not leave
    it on (every later compile of the suite would be written to a deleted tmp folder)."""
    import jax
    from jax._src import compilation_cache  # reset_cache: the only way to drop an initialised cache

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


def test_generate_writes_pngs_in_prompt_order(folder, tmp_path, capsys, restore_compile_cache):
    out = tmp_path / "imgs"
    code, stdout, err = _run(
        [
            "generate",
            "--checkpoint",
            folder,
            "--prompt",
            "a red cube",
            "--prompt",
            "a blue floor",
            "--num-images",
            "2",
            "--steps",
            "2",
            "--out",
            out,
            "--compile-cache",
            tmp_path / "xla",
        ],
        capsys,
    )
    assert code == 0, err
    assert "compile" in err and "run" in err and "sampling: 2/2 steps (100%)" in err and str(out) in stdout
    assert any((tmp_path / "xla").iterdir())  # the compiled program went to the persistent cache
    files = sorted(p.name for p in out.iterdir())
    assert files == ["0000.png", "0001.png", "0002.png", "0003.png", "grid.png"]
    first = np.asarray(Image.open(out / "0000.png"))
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.asarray(Image.open(out / "grid.png")).shape == (128, 128, 3)
    # prompt order: image 2 is the second prompt's first image, the same as drawing it alone
    solo = tmp_path / "solo"
    assert (
        _run(["generate", "--checkpoint", folder, "--prompt", "a red cube", "--steps", "2", "--out", solo], capsys)[0]
        == 0
    )
    a = np.asarray(Image.open(solo / "0000.png")).astype(int)
    assert np.abs(a - first.astype(int)).max() <= 1


def test_understand_and_chat(folder, tmp_path, capsys, monkeypatch):
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(img)
    code, out, err = _run(
        [
            "understand",
            "--checkpoint",
            folder,
            "--image",
            img,
            "--question",
            "what shape is in the image?",
            "--max-new-tokens",
            "4",
        ],
        capsys,
    )
    assert code == 0, err
    assert len(out.splitlines()) == 1
    code, out, err = _run(
        ["chat", "--checkpoint", folder, "--image", img, "--max-new-tokens", "3"],
        capsys,
        "what shape?\nand the colour?\n",
        monkeypatch,
    )
    assert code == 0, err
    assert len(out.splitlines()) == 2


def test_orbax_checkpoint_works_too(folder, tmp_path, capsys):
    from convert.torch_to_orbax import main as convert_main

    ckpt = tmp_path / "orbax"
    assert convert_main([str(folder), "--out", str(ckpt), "--dtype", "float32"]) == 0
    out = tmp_path / "o"
    code, _, err = _run(
        ["generate", "--checkpoint", ckpt, "--prompt", "a red cube", "--steps", "2", "--out", out], capsys
    )
    assert code == 0, err
    assert (out / "0000.png").is_file()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["generate", "--checkpoint", "/nonexistent", "--prompt", "x"], "/nonexistent"),
        (["generate", "--checkpoint", "{folder}", "--prompt", "x", "--steps", "0"], "--steps"),
        (["generate", "--checkpoint", "{folder}"], "no prompt"),
        (["generate", "--checkpoint", "{folder}", "--prompt", "word " * 1200, "--steps", "1"], "exceeds the context"),
        (
            ["understand", "--checkpoint", "{folder}", "--image", "{folder}/config.json", "--question", "q"],
            "cannot read image",
        ),
        (["generate", "--checkpoint", "{folder}", "--prompts-file", "/nonexistent.txt"], "cannot read"),
    ],
)
def test_bad_inputs(folder, tmp_path, capsys, argv, needle):
    argv = [a.replace("{folder}", str(folder)) for a in argv] + ["--out", str(tmp_path / "o")] * (argv[0] == "generate")
    code, out, err = _run(argv, capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("janusflow-sample: error:") and needle in line, line
    assert not (tmp_path / "o").exists()


def test_nonsense_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--bogus"])
    assert e.value.code == 2
