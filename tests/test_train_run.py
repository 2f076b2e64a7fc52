"""janusflow-train end to end, as separate processes (both tasks): loss falls, SIGKILL (mid-training or during an
async save) then resume ends bit-identical to an uninterrupted run, NaN stops cleanly, bad configs and
data fail with one clear line, two jax.distributed processes equal one process."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_COMPILE
from train_data import make_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "train.cli"]


CONFIGS = {"janusflow": ROOT / "train/configs/tiny.yaml", "janus": ROOT / "train/configs/tiny-janus.yaml"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return root, make_dataset(str(root / "data"))


def _common(root, paths, task="janusflow"):
    return [
        "--config",
        str(CONFIGS[task]),
        f"data.data_dir={root / 'tfds'}",
        f"data.gen.path={paths['captions']}",
        f"data.und.path={paths['qa']}",
        f"data.text.path={paths['text']}",
        "run.sample_prompts=[]",
        "run.log_every=1",
    ]


@pytest.fixture(scope="module")
def work(data):
    root, paths = data
    return root, _common(root, paths)


def _env(root, devices=1, **extra):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
        # the processes of one test compile the same step: share a persistent compilation cache
        JAX_COMPILATION_CACHE_DIR=str(root / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def _train(root, common, *overrides, devices=1, env=None, timeout=600):
    return subprocess.run(
        CLI + common + list(overrides),
        cwd=ROOT,
        env=_env(root, devices, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _final_params(out_dir):
    from janusflow_jax import checkpoint
    from janusflow_jax.training.state import flat_params

    tree = checkpoint.restore_params(os.path.join(out_dir, "export"))
    from janusflow_jax.weights import flatten_params

    return {k: np.asarray(v) for k, v in flatten_params(tree).items()}


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _check_reference_run(task, out, stderr, steps):
    """The uninterrupted run's own outputs: the loss and each of its parts fall, the progress line, the
    PNGs, and an export that `janusflow_jax.load` reads."""
    m = _metrics(out)
    assert [h["step"] for h in m] == list(range(1, steps + 1))
    first = np.mean([h["loss"] for h in m[:5]])
    last = np.mean([h["loss"] for h in m[-5:]])
    assert last < 0.6 * first, (first, last)
    parts = ("rf", "und", "text") if task == "janusflow" else ("gen", "und", "text")
    for part in parts:  # every part learns on this data
        assert np.mean([h[part] for h in m[-5:]]) < np.mean([h[part] for h in m[:5]]), part
    assert f"step {steps}/{steps}" in stderr and "MFU" in stderr and "ETA" in stderr
    for png in ("loss.png", f"samples/step_{steps:07d}.png"):
        with open(out / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    import janusflow_jax

    # the export is a model folder janusflow_jax.load reads (what draws and answers from an export, for
    # both families, is test_geneval_train's last check; the samples PNG above is the trainer's drawing)
    assert janusflow_jax.load(str(out / "export")).family == task


# the kill point per task: the loop (data, step, checkpoints, resume) is the same for every task, so each
# task takes one of the two kills — JanusFlow mid-run between saves, Janus right after a save started —
# and the checkpoints a resume may find: the newest whose async write had finished (step 4's may still be
# in flight after step 5; step 6's right after its save started)
KILLS = {"janusflow": ("after_step", 5, (2, 4)), "janus": ("after_save", 6, (4, 6))}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["janusflow", "janus"])
def test_sigkill_mid_run_or_during_a_save_then_resume_matches_uninterrupted(data, task):
    """Killed after step 5's update (JanusFlow: mid-run, step 5 replayed from checkpoint 4, or 3-5 from 2)
    or right after step 6's save started (Janus: its async write in flight, so checkpoint 4 or 6), resumed
    to the end:
    bit-identical to an uninterrupted run, each step in the metrics once. The uninterrupted run is long
    enough to show the loss falling (`_check_reference_run`)."""
    root, paths = data
    common = _common(root, paths, task)
    n = 20
    steps = [f"run.steps={n}", "run.save_every=2", "run.keep=2"]
    ref = root / f"uninterrupted-{task}"
    # the reference saves only at its end (run.save_every is a resumable setting: it changes no number;
    # each async save costs ~0.8 s a step here)
    r = _train(root, common, f"run.out_dir={ref}", *steps, f"run.save_every={n}", "run.sample_prompts=[a red square]",
               "run.sample_steps=3")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    _check_reference_run(task, ref, r.stderr, n)
    fault, kill_step, resumable = KILLS[task]
    out = root / f"killed-{task}"
    r = _train(root, common, f"run.out_dir={out}", *steps, env={"JANUSFLOW_TRAIN_FAULT": f"{fault}:{kill_step}"})
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])  # SIGKILLed
    assert not (out / "export").exists()
    assert [h["step"] for h in _metrics(out)] == list(range(1, kill_step + 1))
    r = _train(root, common, f"run.out_dir={out}", *steps)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and _resumed_step(r.stderr) in resumable, r.stderr[-2000:]
    want, have = _final_params(ref), _final_params(out)
    assert want.keys() == have.keys()
    for k in want:
        np.testing.assert_array_equal(have[k], want[k], err_msg=k)
    # the metrics file has each step once, as the uninterrupted run's
    assert [h["step"] for h in _metrics(out)] == list(range(1, n + 1))
    np.testing.assert_allclose([h["loss"] for h in _metrics(out)], [h["loss"] for h in _metrics(ref)], rtol=0, atol=0)


def _resumed_step(stderr: str) -> int:
    return int(stderr.split("resumed from")[1].split()[0].rstrip("/").split("/")[-1])


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(data):
    """Step 3's batch is corrupt (NaN pixels, `JANUSFLOW_TRAIN_FAULT=nan_batch:3`): the run stops at step
    3 with exit 2 and one line naming the last good checkpoint (step 2), and leaves no export. The run
    is the kill/resume test's JanusFlow configuration, so its compiled step comes from that test's
    compilation cache."""
    root, paths = data
    out = root / "nan"
    r = _train(root, _common(root, paths), f"run.out_dir={out}", "run.steps=20", "run.save_every=1", "run.keep=2",
               env={"JANUSFLOW_TRAIN_FAULT": "nan_batch:3"})  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("janusflow-train: error")][0]
    assert "non-finite loss at step 3" in line and "last good checkpoint is step 2" in line, line
    kept = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [1, 2], kept
    assert not (out / "export").exists()
    assert [h["step"] for h in _metrics(out)] == [1, 2]


def test_bad_configs_fail_with_one_clear_line(work, tmp_path, capsys):
    """In process (each case fails before anything compiles): exit 2 and one error line naming it."""
    from train.cli import main

    root, common = work
    cases = [
        (["optim.lrr=1"], "config `optim`: The fields `lrr` are not valid for OptimConfig"),
        (["optim.lr=abc"], "config `optim.lr`: Couldn't parse 'abc' into a float"),
        (["run.steps=true"], "config `run.steps`: expected a number, got True"),
        (["stage=7"], "task janusflow has no stage '7'"),
        (["task=vae"], "task vae has no stage '2'"),
        (["loss.vae.kl_weight=0.5"], "loss.vae: not used by task janusflow"),
        (["data.gen.path=/nonexistent/folder"], "/nonexistent/folder"),
        (["data.mix.gen=0", "data.mix.und=0", "data.mix.text=0"], "data.mix"),
        (["model.init_from=/nonexistent/model"], "/nonexistent/model"),
        (["run.steps=0"], "run.steps must be positive"),
        (["model.fsdp_gather=sometimes"], "model.fsdp_gather must be layer or once"),
        (["notakeyvalue"], "is not key=value"),
    ]
    for overrides, msg in cases:
        capsys.readouterr()
        rc = main(common + [f"run.out_dir={tmp_path / 'bad'}", *overrides])
        err = capsys.readouterr().err
        assert rc == 2, (overrides, err[-1500:])
        errors = [ln for ln in err.splitlines() if ln.startswith("janusflow-train: error:")]
        assert len(errors) == 1 and msg in errors[0], (overrides, err[-1500:])
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_equal_one_process(data):
    """2 jax.distributed processes (loopback) give the loss curve of 1 process with their devices
    together: 2 × 2 CPU devices against 1 × 4 (process-local rows spread over several local devices).

    The multi-process plumbing (per-process loader slices, global arrays from process-local rows, one
    logger, the checkpoint and export of a global state) is the loop's, whatever the task: the Janus task
    runs it with generation rows (their draws on the global batch) and text rows. The JanusFlow step's
    sharding over 8 devices is `test_train_core`'s; its sampler over 2 processes `test_batch_sampling`'s."""
    task = "janus"
    root, paths = data
    common = _common(root, paths, task)
    per_process = 2
    mix = ["run.steps=3", "data.mix.gen=8", "data.mix.und=0", "data.mix.text=8", "run.save_every=3"]
    one = root / f"one-process-{task}"
    r = _train(root, common, f"run.out_dir={one}", *mix, devices=2 * per_process)
    assert r.returncode == 0, r.stderr[-3000:]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = root / f"two-processes-{task}"
    procs = [
        subprocess.Popen(
            CLI
            + common
            + [
                f"run.out_dir={two}",
                *mix,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            cwd=ROOT,
            env=_env(root, per_process, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "2 process(es)" in outs[0][1] and "step 3/3" in outs[0][1]
    assert "step 3/3" not in outs[1][1] and "2 process(es)" not in outs[1][1]  # only process 0 logs
    a, b = _metrics(one), _metrics(two)
    assert [h["step"] for h in a] == [h["step"] for h in b] == [1, 2, 3]
    for k in ("loss", "gen", "text", "grad_norm"):
        np.testing.assert_allclose([h[k] for h in b], [h[k] for h in a], rtol=1e-5, err_msg=k)
    # The export of a multi-process run: every process gathers, process 0 writes; the same weights.
    from janusflow_jax import checkpoint
    from janusflow_jax.training.state import flat_params

    assert checkpoint.read_metadata(str(two / "export"))["trained_steps"] == 3
    ea, eb = checkpoint.restore_params(str(one / "export")), checkpoint.restore_params(str(two / "export"))
    fa, fb = flat_params(ea), flat_params(eb)
    assert fa.keys() == fb.keys() and len(fa) > 10
    for k in fa:
        np.testing.assert_allclose(np.asarray(fb[k]), np.asarray(fa[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    assert not [p.name for p in two.iterdir() if ".partial-" in p.name]
