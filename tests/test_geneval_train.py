"""The GenEval-world presets of both families end to end on a tiny slice (what trains the shipped models,
scaled down in steps and batch only): JanusFlow's VAE fine-tune then stages 1, 2 and 3, and Janus's VQ
tokenizer from scratch then its stages 1, 2 and 3, each stage starting from the previous one's export.
The tokenizer's and stage 1's loss falls within the stage; stages 2 and 3 start from the previous
export and see its batches step for step, and on them beat the previous stage (overall and on
understanding) — within 8 steps at batch 4 + 4 a stage's loss moves less than from one batch to
the next once the model starts trained (the debiased EMA export is the previous stage's average). The
VAE stage (a fine-tune of the shipped VAE) must move the weights and feed stage 1. The VQ reports its
codebook usage, and each family's result loads, draws and answers.

Both chains run in one one-device process (`train.cli.main` per stage: one start-up, the GenEval data
prepared once), and the shapes-world presets are parsed, not run (same architectures and stages). The presets' warm-ups are shortened so that a few steps see a
learning rate that moves the loss; models, processors, data kinds and stages are the presets' own."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_COMPILE

ROOT = pathlib.Path(__file__).resolve().parents[1]

_DRIVER = """
import gc, json, sys
import jax
from train.cli import main
for argv in json.loads(sys.argv[1]):
    rc = main(argv)
    if rc:
        sys.exit(rc)
    jax.clear_caches()  # the next stage compiles its own programs: free this one's
    gc.collect()
"""

SMALL = ["data.mix.gen=4", "data.mix.und=4", "run.save_every=1000", "run.export_every=0", "run.sample_every=0",
         "optim.warmup_steps=2"]  # fmt: skip
TOKENIZER = ["data.mix.gen=4", "run.save_every=1000", "run.sample_every=0"]

CHAINS = {  # family → [(preset, steps, overrides)]: the tokenizer stage, then stages 1-3
    "janusflow": [
        ("geneval/vae.yaml", 4, TOKENIZER),
        ("geneval/stage1.yaml", 8, ["model.vae_from={prev}", *SMALL]),
        ("geneval/stage2.yaml", 8, ["model.init_from={prev}", *SMALL]),
        ("geneval/stage3.yaml", 8, ["model.init_from={prev}", *SMALL]),
    ],
    "janus": [
        ("geneval-janus/vq.yaml", 16, TOKENIZER),
        ("geneval-janus/stage1.yaml", 8, ["model.vq_from={prev}", *SMALL]),
        ("geneval-janus/stage2.yaml", 8, ["model.init_from={prev}", *SMALL]),
        ("geneval-janus/stage3.yaml", 8, ["model.init_from={prev}", *SMALL]),
    ],
}


def _falls(history: list[dict], key: str, n: int = 4) -> tuple[float, float]:
    """The mean of `key` over the first n and the last n steps."""
    return float(np.mean([h[key] for h in history[:n]])), float(np.mean([h[key] for h in history[-n:]]))


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> dict[str, list[tuple[str, int, pathlib.Path]]]:
    """Both families' chains in one one-device process (one start-up; the GenEval data prepared once)."""
    root = tmp_path_factory.mktemp("geneval-train")
    argvs, outs = [], {}
    for family, chain in CHAINS.items():
        prev = None
        for preset, steps, overrides in chain:
            out = root / family / pathlib.Path(preset).stem
            argvs.append(["--config", str(ROOT / "train" / "configs" / preset), f"run.out_dir={out}",
                          f"data.data_dir={root / 'tfds'}", f"run.steps={steps}", "run.log_every=1",
                          "run.sample_prompts=[]", *(o.format(prev=prev) for o in overrides)])  # fmt: skip
            outs.setdefault(family, []).append((preset, steps, out))
            prev = out / "export"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(argvs)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=1500)  # fmt: skip
    (root / "train.log").write_text(r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    return outs


def test_every_preset_parses():
    """Every preset in train/configs (the shapes world's too, which the chains below do not run) is a
    valid run config: known keys, right types, its base chain resolved."""
    from janusflow_jax.training.config import load_config

    presets = sorted((ROOT / "train" / "configs").rglob("*.yaml"))
    assert len(presets) >= 14
    for preset in presets:
        cfg = load_config(str(preset), [], validate=False)
        assert cfg.run.steps > 0 and cfg.task in ("janusflow", "janus", "vae", "vq"), preset


@pytest.mark.slow
@pytest.mark.parametrize("family", ["janusflow", "janus"])
def test_presets_train_and_the_result_draws_and_answers(family, chains):
    outs = chains[family]
    prev = None
    for preset, steps, out in outs:
        with open(out / "metrics.jsonl") as f:
            history = [json.loads(line) for line in f]
        assert [h["step"] for h in history] == list(range(1, steps + 1)), preset
        assert all(np.isfinite(h["loss"]) for h in history), preset
        if preset.endswith(("vq.yaml", "stage1.yaml")):
            # from scratch (the tokenizer, stage 1) the loss falls by far more than a batch's noise
            first, last = _falls(history, "loss")
            assert last < first - 0.05 * abs(first), (preset, first, last)
        elif not preset.endswith("vae.yaml"):
            # stages 2 and 3 start from the previous stage's export and see the same batches step for step
            # (same data stream and mix), so batch difficulty cancels: on every step's batch together their
            # models (trained further) beat the previous stage's, overall and on understanding
            for key in ("loss", "und"):
                now, before = np.mean([h[key] for h in history]), np.mean([h[key] for h in prev])
                assert now < before, (preset, key, before, now)
        prev = history
    if family == "janus":
        with open(outs[0][2] / "metrics.jsonl") as f:
            assert all(0 < h["usage"] <= 1 for h in map(json.loads, f))

    import janusflow_jax

    if family == "janusflow":  # the fine-tune moved the shipped VAE
        from janusflow_jax.model import load_vae
        from janusflow_jax.weights import flatten_params

        before = flatten_params(load_vae(janusflow_jax.DEFAULT_MODEL)[1])
        after = flatten_params(load_vae(str(outs[0][2] / "export"))[1])
        assert before.keys() == after.keys()
        assert any(not np.array_equal(np.asarray(before[k], np.float32), np.asarray(after[k], np.float32)) for k in before)

    model = janusflow_jax.load(str(outs[-1][2] / "export"))
    assert model.family == family
    prompt = "a photo of a red circle and a blue square"
    images = model.generate_images([prompt], **({"num_steps": 3} if family == "janusflow" else {}))
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8
    answers = model.answer([images[0]], ["how many circles are there?"], max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)
