"""What a new user does, from their own folder: a folder of ordinary photos (PNG, JPEG, RGBA, palette,
one corrupt file, one empty caption) with ordinary captions longer than a preset's prompt length, the
README's fine-tuning command run unchanged from that folder (the preset's own paths resolve against
the preset, the user's against their folder), then the export sampled and asked a question with
`janusflow-sample`. JanusFlow from the shipped model, Janus from a converted checkpoint (the tiny
fixture stands for Janus-Pro)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_COMPILE

from sample.cli import main as sample_main

ROOT = pathlib.Path(__file__).resolve().parents[1]
CAPTIONS = [
    "A wide sandy beach at sunset with gentle waves rolling in and a few people walking their dogs along the shore",
    "Close-up photograph of a ripe red apple resting on an old wooden kitchen table next to a ceramic cup",
    "An aerial view of a green valley with a winding river, small farm houses and a road crossing the hills",
    "A city street at night, wet asphalt reflecting neon signs, taxis waiting at a red traffic light downtown",
]

ANSWERS = ["a beach at sunset", "a red apple", "a green valley", "a street at night"]


def _user_folder(root: pathlib.Path) -> pathlib.Path:
    rng = np.random.default_rng(0)
    d = root / "my_images"
    d.mkdir(parents=True)
    caps, qa = [], []
    for i in range(20):
        img = (rng.random((48 + 8 * (i % 3), 64, 3)) * 40 + np.array([200, 80, 40]) * ((i % 4) / 3)).astype(np.uint8)
        kind = i % 4
        if kind == 0:
            name = f"photo{i:02d}.png"
            Image.fromarray(img).save(d / name)
        elif kind == 1:
            name = f"photo{i:02d}.jpg"
            Image.fromarray(img).save(d / name, quality=85)
        elif kind == 2:
            name = f"photo{i:02d}_alpha.png"
            Image.fromarray(np.dstack([img, np.full(img.shape[:2], 180, np.uint8)]), "RGBA").save(d / name)
        else:
            name = f"photo{i:02d}_palette.png"
            Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(d / name)
        caps.append({"file": name, "caption": CAPTIONS[i % 4] if i != 7 else "   "})  # one empty caption
        qa.append({"image": name, "question": "What is shown in this photograph, in a few words?",
                   "answer": ANSWERS[i % 4]})  # fmt: skip
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    caps.append({"file": "broken.png", "caption": CAPTIONS[0]})
    (d / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in caps))
    (d / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    return d


COMMANDS = {
    # the README's "your own data, starting from the shipped model" command
    "janusflow": ["--config", str(ROOT / "train/configs/shapes/stage2.yaml"), "model.init_from=default"],
    # the README's Janus fine-tuning command on a converted checkpoint (the tiny one in tests/fixtures)
    "janus": ["--config", str(ROOT / "train/configs/tiny-janus.yaml"), "data.mix.text=0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["janusflow", "janus"])
def test_fine_tune_on_my_photos_from_my_folder(family, tmp_path, monkeypatch, capsys):
    user = tmp_path / "user"
    _user_folder(user)
    monkeypatch.chdir(user)  # relative paths below are the user's; the preset's are the preset's
    argv = COMMANDS[family] + [
        "data.gen.kind=image_caption", "data.gen.path=my_images/", "data.und.kind=image_qa",
        "data.und.path=my_images/qa.jsonl", "data.mix.gen=4", "data.mix.und=4", "run.steps=3",
        "run.out_dir=runs/mine", "run.save_every=3", "run.sample_prompts=[]", "data.data_dir=tfds",
    ]  # fmt: skip
    # janusflow-train as its own process on one CPU device (what a user's laptop has; the test process
    # simulates 8, and an 8-device step compiles twice as long)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}",
               PYTHONPATH=str(ROOT))  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "train.cli", *argv], cwd=user, env=env, capture_output=True, text=True,
                       timeout=900)  # fmt: skip
    err = r.stderr
    assert r.returncode == 0, err[-3000:]
    assert "janusflow-train: finished at step 3" in r.stdout
    # the corrupt file and the empty caption: skipped when the dataset is built, and reported
    assert "data.gen: 19 records" in err, err[-3000:]
    assert "skipped 2 of 21 records" in err and "broken.png" in err, err[-3000:]
    assert "truncated to fit so far: gen" in err, err[-3000:]  # the captions are longer than the prompt length
    export = user / "runs" / "mine" / "export"
    assert (export / "tokenizer.json").is_file()
    # sampled and answered with janusflow-sample, as the README says
    out = user / "samples"
    assert sample_main(["generate", "--checkpoint", str(export), "--prompt", CAPTIONS[1], "--out", str(out),
                        *(["--steps", "2"] if family == "janusflow" else [])]) == 0  # fmt: skip
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 2 and "grid.png" in pngs  # the image and the grid
    assert all(min(Image.open(out / n).size) >= 32 for n in pngs)
    capsys.readouterr()
    q = ["understand", "--checkpoint", str(export), "--image", "my_images/photo01.jpg", "--question",
         "What is shown in this photograph?", "--max-new-tokens", "4"]  # fmt: skip
    assert sample_main(q) == 0
    assert capsys.readouterr().out.strip() != ""
