"""janusflow-sample on a Janus-Pro-format folder (the official-code fixture), as a new user runs it:
generate / understand / chat through the same CLI as JanusFlow, family options refused for the
wrong family with one clear line (exit 2), progress per 64 image tokens."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import JANUS_DIR, TINY_DIR
from sample.cli import main


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_janus_images(tmp_path, capsys):
    out = tmp_path / "imgs"
    argv = ["generate", "--checkpoint", JANUS_DIR, "--prompt", "a red cube", "--prompt", "a blue ball"]
    code, stdout, err = _run(argv + ["--num-images", "2", "--top-k", "20", "--seed", "3", "--out", out], capsys)
    assert code == 0, err
    files = sorted(p.name for p in out.iterdir())
    assert files == ["0000.png", "0001.png", "0002.png", "0003.png", "grid.png"]
    imgs = [np.asarray(Image.open(out / f"{i:04d}.png")) for i in range(4)]
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in imgs)
    assert not np.array_equal(imgs[0], imgs[1])  # two images of one prompt: different draws
    # 256 codes per 64-px image (4x VQ): a progress report every 64 codes, ending at 256/256
    assert "image tokens" in err and "256/256" in err, err
    # the same seed gives the same images, here drawn one per call (batch-independent key streams)
    again = tmp_path / "again"
    code, _, err = _run(argv + ["--num-images", "2", "--top-k", "20", "--seed", "3", "--batch-size", "1",
                                "--out", again], capsys)  # fmt: skip
    assert code == 0, err
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(Image.open(again / f"{i:04d}.png")), imgs[i])


def test_understand_and_chat_janus(tmp_path, capsys, monkeypatch):
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(img)
    code, out, err = _run(["understand", "--checkpoint", JANUS_DIR, "--image", img, "--question", "what?",
                           "--max-new-tokens", "4"], capsys)  # fmt: skip
    assert code == 0, err
    assert "answered" in err and len(out.splitlines()) == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("what?\nand now?\n"))
    code, out, err = _run(["chat", "--checkpoint", JANUS_DIR, "--image", img, "--max-new-tokens", "4"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 2


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["generate", "--checkpoint", JANUS_DIR, "--prompt", "x", "--steps", "3"],
            ["--steps", "JanusFlow", "Janus model"],
        ),
        (["generate", "--checkpoint", JANUS_DIR, "--prompt", "x", "--solver", "heun"], ["--solver", "Janus model"]),
        (["generate", "--checkpoint", TINY_DIR, "--prompt", "x", "--top-k", "5"], ["--top-k", "JanusFlow model"]),
        (["generate", "--checkpoint", TINY_DIR, "--prompt", "x", "--greedy"], ["--greedy", "JanusFlow model"]),
        (["generate", "--checkpoint", JANUS_DIR, "--prompt", "x", "--temperature", "0"], ["--temperature", "--greedy"]),
        (["generate", "--checkpoint", JANUS_DIR, "--prompt", "x", "--vae", TINY_DIR / "vae"], ["Janus", "--vae"]),
        (["generate", "--checkpoint", JANUS_DIR, "--prompt", "word " * 20000], ["exceeds the context"]),
    ],
)
def test_wrong_family_options_are_refused(argv, words, tmp_path, capsys):
    code, out, err = _run(argv + ["--out", tmp_path / "o"], capsys)
    assert code == 2
    line = [ln for ln in err.splitlines() if ln.startswith("janusflow-sample: error:")]
    assert len(line) == 1 and all(w in line[0] for w in words), err
    assert not (tmp_path / "o").exists()
