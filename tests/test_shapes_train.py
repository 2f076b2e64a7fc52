"""The shapes-world recipe end to end on a tiny slice (what trained the shipped model, scaled down):
the VAE stage, then JanusFlow stages 1, 2 and 3, each 15–25 steps with the shipped presets,
each starting from the previous stage's export. Every stage's loss must fall, and the result loads
and samples."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_COMPILE

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "train" / "configs" / "shapes"


def _train(root: pathlib.Path, stage: str, *overrides: str) -> list[dict]:
    out = root / stage
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}",
        PYTHONPATH=str(ROOT),
    )
    cmd = [
        sys.executable,
        "-m",
        "train.cli",
        "--config",
        str(CONFIGS / f"{stage}.yaml"),
        f"run.out_dir={out}",
        f"data.data_dir={root / 'tfds'}",
        "run.log_every=1",
        "run.sample_prompts=[]",
        *overrides,
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _falls(history: list[dict], key: str, n: int = 5) -> tuple[float, float]:
    first = float(np.mean([h[key] for h in history[:n]]))
    last = float(np.mean([h[key] for h in history[-n:]]))
    return first, last


@pytest.mark.slow
def test_every_stage_trains_and_the_result_samples(tmp_path):
    vae = _train(tmp_path, "vae", "run.steps=20", "run.save_every=20", "data.mix.gen=8", "run.sample_every=0")
    first, last = _falls(vae, "loss")
    assert last < 0.7 * first, (first, last)
    small = ["data.mix.gen=8", "data.mix.und=4", "run.save_every=1000", "run.export_every=0"]
    runs = {
        "stage1": _train(tmp_path, "stage1", "run.steps=25", f"model.vae_from={tmp_path / 'vae' / 'export'}", *small),
        "stage2": _train(
            tmp_path,
            "stage2",
            "run.steps=15",
            f"model.init_from={tmp_path / 'stage1' / 'export'}",
            "run.sample_every=0",
            *small,
        ),
        "stage3": _train(
            tmp_path,
            "stage3",
            "run.steps=15",
            f"model.init_from={tmp_path / 'stage2' / 'export'}",
            "run.sample_every=0",
            *small,
        ),
    }
    for stage, history in runs.items():
        assert len(history) == (25 if stage == "stage1" else 15), stage
        first, last = _falls(history, "loss")
        assert last < first - 0.05 * abs(first), (stage, first, last)
        # understanding learns fastest: its cross-entropy falls in every stage
        u_first, u_last = _falls(history, "und")
        assert u_last < u_first, (stage, u_first, u_last)

    import janusflow_jax

    model = janusflow_jax.load(str(tmp_path / "stage3" / "export"))
    images = model.generate_images(["a large red circle in the top left on a white background"], num_steps=3)
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8
    answers = model.answer([images[0]], ["what shape is in the image?"], max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)
