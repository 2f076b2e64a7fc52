"""`janusflow-sample batch`: a JSONL prompt file → GenEval-style folders on every device.

Checked on the tiny fixture models of both families (JanusFlow at 2 ODE steps, Janus at its 256 codes):
- the same images whatever the devices and the batch composition: 1 device × 2 rows per batch
  (3 batches) against 8 devices × 1 row (1 batch, 2 dummy rows) in this process, and against
  2 `jax.distributed` processes × 4 devices (loopback, gloo); JanusFlow latents within float32
  rounding, Janus codes equal, and every uint8 pixel that differs counted and printed
  (`pytest -s` or `-rP` shows the figures);
- SIGKILL after the 3rd written image, then a rerun: every image present exactly once, bit-identical
  to an uninterrupted job; a rerun with other settings is refused;
- bad prompt files refused whole, one line per problem, nothing written.

The two-process jobs start (as child processes) with the first test and compile while the in-process
tests run; the module's programs share a persistent compilation cache.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_COMPILE, JANUS_DIR, TINY_DIR, rel_err
from PIL import Image

from sample.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = [
    {"prompt": "a red cube", "seed": 7, "count": 2, "tag": "single_object", "include": [{"class": "cube"}]},
    {"prompt": "a blue floor under a red cube", "count": 3},  # seed from --seed
    {"prompt": "x", "seed": 1},  # count from --num-images
]
COUNTS = [2, 3, 1]
SAVED = (("samples", "png"), ("raw", "npy"))  # per image: the PNG and (--save-raw) its latents / codes
FAMILY = {
    "janusflow": (TINY_DIR, ["--steps", "2"]),
    "janus": (JANUS_DIR, ["--top-k", "20"]),
}


def _argv(family, prompts, out, *extra):
    ckpt, opts = FAMILY[family]
    return ["batch", "--checkpoint", str(ckpt), "--prompts", str(prompts), "--out", str(out), "--seed", "5",
            "--save-raw", *opts, *[str(e) for e in extra]]  # fmt: skip


def _env(work, devices, **extra):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
        JAX_DEFAULT_MATMUL_PRECISION="highest",  # as conftest sets in this process
        JAX_COMPILATION_CACHE_DIR=str(work / "xla"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import jax
    from jax._src import compilation_cache  # reset_cache: the only way to drop an initialised cache

    root = tmp_path_factory.mktemp("batch")
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in PROMPTS[:2]) + "\n" + json.dumps(PROMPTS[2]) + "\n"
    )
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(root / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield root
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def two_process_jobs(work):
    """Per family, one job as 2 jax.distributed processes × 4 CPU devices, started now (waited on later)."""
    jobs = {}
    for family in FAMILY:
        port = _free_port()
        out = work / f"{family}-2proc"
        jobs[family] = (out, [
            subprocess.Popen(
                [sys.executable, "-m", "sample.cli", *_argv(family, work / "prompts.jsonl", out),
                 "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                cwd=ROOT, env=_env(work, 4, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for i in range(2)
        ])  # fmt: skip
    yield jobs
    for _, procs in jobs.values():
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _expected_files(out):
    want = {"job.json", "summary.json"}
    for i, n in enumerate(COUNTS):
        want |= {f"{i:05d}/metadata.jsonl"} | {f"{i:05d}/{d}/{k:04d}.{e}" for k in range(n) for d, e in SAVED}
    return want


def _files(out):
    return {str(p.relative_to(out)) for p in pathlib.Path(out).rglob("*") if p.is_file()}


def _load(out):
    """{(index, k): (uint8 image, raw latents/codes)} of a job folder."""
    res = {}
    for i, n in enumerate(COUNTS):
        for k in range(n):
            base = pathlib.Path(out) / f"{i:05d}"
            res[i, k] = (np.asarray(Image.open(base / f"samples/{k:04d}.png")), np.load(base / f"raw/{k:04d}.npy"))
    return res


def _compare(family, a, b, what):
    """Raw outputs within float32 rounding (JanusFlow) or equal (Janus); differing pixels counted."""
    img_a = np.stack([a[key][0] for key in sorted(a)]).astype(np.int16)
    img_b = np.stack([b[key][0] for key in sorted(a)]).astype(np.int16)
    raw_a = np.stack([a[key][1] for key in sorted(a)])
    raw_b = np.stack([b[key][1] for key in sorted(a)])
    differ = int((img_a != img_b).sum())
    if family == "janusflow":
        assert raw_a.dtype == np.float32
        err = rel_err(raw_b, raw_a)
        stat = f"max |Δlatent| {np.abs(raw_a - raw_b).max():.3g} (relative {err:.3g})"
        assert err < 1e-5, (what, stat)
    else:
        assert raw_a.dtype == np.int32
        stat = f"codes differing {int((raw_a != raw_b).sum())}/{raw_a.size}"
        np.testing.assert_array_equal(raw_b, raw_a, err_msg=what)
    print(f"\n[{family}] {what}: {stat}; uint8 pixel values differing {differ}/{img_a.size}, "
          f"max |Δ| {int(np.abs(img_a - img_b).max())}")  # fmt: skip
    assert np.abs(img_a - img_b).max() <= 1 and differ <= img_a.size // 1000, (what, differ)


_REF = {}


def _reference(family, work, capsys):
    """The 1-device job (2 rows per batch: 3 batches), run once per family."""
    if family not in _REF:
        out = work / f"{family}-1dev"
        code, stdout, err = _run(
            _argv(family, work / "prompts.jsonl", out, "--devices", 1, "--batch-per-device", 2), capsys
        )
        assert code == 0, err
        _REF[family] = (out, stdout, err)
    return _REF[family]


@pytest.mark.parametrize("family", list(FAMILY))
def test_devices_and_batches_do_not_change_images(family, work, capsys, two_process_jobs):
    # (two_process_jobs: started here, the two-process jobs compile while this test runs)
    ref, stdout, err = _reference(family, work, capsys)
    assert _files(ref) == _expected_files(ref)
    for i, p in enumerate(PROMPTS):  # GenEval layout: the input line verbatim beside the samples
        assert json.loads((ref / f"{i:05d}/metadata.jsonl").read_text()) == p
    s = json.loads((ref / "summary.json").read_text())
    assert (s["images"], s["generated"], s["skipped"], s["devices"], s["processes"], s["batch_size"], s["batches"]) == (
        6, 6, 0, 1, 1, 2, 3)  # fmt: skip
    assert s["images_per_s"] > 0 and s["seconds"] > 0 and s["family"] == family
    assert "sampling: 6/6 images (100%)" in err and "images/s" in err and "1 device(s), 1 process(es)" in stdout
    imgs = _load(ref)
    assert imgs[0, 0][0].shape == (64, 64, 3) and not np.array_equal(imgs[0, 0][0], imgs[0, 1][0])

    out = work / f"{family}-8dev"
    code, stdout, err = _run(_argv(family, work / "prompts.jsonl", out), capsys)  # all 8 devices, 1 row each
    assert code == 0, err
    assert _files(out) == _expected_files(out)
    s = json.loads((out / "summary.json").read_text())
    assert (s["devices"], s["batch_size"], s["batches"]) == (8, 8, 1)
    _compare(family, imgs, _load(out), "8 devices × 1 row vs 1 device × 2 rows")


@pytest.mark.parametrize("family", list(FAMILY))
def test_two_processes_equal_one_device(family, work, capsys, two_process_jobs):
    ref, _, _ = _reference(family, work, capsys)
    out, procs = two_process_jobs[family]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]
    assert "8 device(s), 2 process(es)" in outs[0][0] and "wrote" not in outs[1][0], outs[1][0][-2000:]
    assert "sampling: 6/6 images" in outs[0][1] and "sampling" not in outs[1][1]  # only process 0 reports
    assert _files(out) == _expected_files(out)
    s = json.loads((out / "summary.json").read_text())
    assert (s["devices"], s["processes"], s["batch_size"], s["generated"]) == (8, 2, 8, 6)
    _compare(family, _load(ref), _load(out), "2 processes × 4 devices vs 1 device")


def test_sigkill_then_resume_gives_the_uninterrupted_images(work, capsys):
    ref, _, _ = _reference("janusflow", work, capsys)
    out = work / "killed"
    argv = _argv("janusflow", work / "prompts.jsonl", out, "--devices", 1, "--batch-per-device", 2)
    env = _env(work, 8, JANUSFLOW_SAMPLE_FAULT="after_image:3")  # same devices as this process: cache hits
    cmd = [sys.executable, "-m", "sample.cli", *argv]
    r = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-3000:]
    pngs = sorted(p for p in _files(out) if p.endswith(".png"))
    # batches [0,1] [2,3] [4,5] of (prompt, k): killed after image 3 → its batch partner was in flight
    assert pngs == ["00000/samples/0000.png", "00000/samples/0001.png", "00001/samples/0000.png"]
    assert not (out / "summary.json").exists()
    (out / "00001/samples/.0001.png.tmp").write_bytes(b"half a PNG")  # as a kill mid-write leaves it

    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    assert "wrote 3 image(s) (3 already finished)" in stdout
    assert _files(out) == _expected_files(out)  # every image exactly once, no temp file left
    a, b = _load(ref), _load(out)
    for key in a:  # the same devices and batch size: bit-identical, though the resumed batches differ
        np.testing.assert_array_equal(b[key][0], a[key][0], err_msg=str(key))
        np.testing.assert_array_equal(b[key][1], a[key][1], err_msg=str(key))

    code, stdout, err = _run(argv, capsys)  # nothing left to do
    assert code == 0 and "wrote 0 image(s) (6 already finished)" in stdout, err
    code, _, err = _run(argv + ["--cfg", "3"], capsys)  # other settings into the same folder: refused
    assert code == 2 and err.strip().splitlines()[-1].endswith(
        "holds a job with other settings (cfg_weight); use a new --out"
    )


def test_bad_prompt_files_are_refused_whole(tmp_path, capsys):
    lines = [
        '{"prompt": "fine", "seed": 3}',
        '{"prompt": "a", ',
        '["a red cube"]',
        '{"prompt": "   "}',
        '{"seed": 1}',
        '{"prompt": 5}',
        "",
        '{"prompt": "a", "seed": "7"}',
        '{"prompt": "a", "seed": 1.5, "count": 0}',
        '{"prompt": "a", "seed": -1, "count": true}',
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, _, err = _run(["batch", "--prompts", bad, "--out", out, "--checkpoint", TINY_DIR], capsys)
    assert code == 2
    errs = err.strip().splitlines()
    want = [
        ":2: invalid JSON (Expecting property name enclosed in double quotes at column 16)",
        ':3: expected a JSON object like {"prompt": "..."}, got array',
        ':4: empty "prompt"',
        ':5: no "prompt"',
        ':6: "prompt" must be a string, got 5 (integer)',
        ':8: "seed" must be an integer in [0, 2^32), got "7" (string)',
        ':9: "seed" must be an integer in [0, 2^32), got 1.5 (number)',
        ':9: "count" must be a positive integer, got 0',
        ':10: "seed" must be an integer in [0, 2^32), got -1',
        ':10: "count" must be a positive integer, got true (boolean)',
    ]
    assert len(errs) == len(want) + 1, err
    for line, w in zip(errs, want):
        assert line == f"janusflow-sample: error: {bad}{w}", (line, w)
    assert errs[-1] == f"janusflow-sample: error: {len(want)} problem(s) in {bad}; nothing was generated"
    assert not out.exists()  # refused before the model was loaded: nothing written

    # too long for the context: found once the tokenizer is loaded, still before anything is written
    long = tmp_path / "long.jsonl"
    long.write_text('{"prompt": "fine"}\n' + json.dumps({"prompt": "word " * 300}) + "\n")
    code, _, err = _run(["batch", "--prompts", long, "--out", out, "--checkpoint", TINY_DIR, "--steps", "2"], capsys)
    errs = err.strip().splitlines()
    assert code == 2 and "exceeds the context of 1024 positions" in errs[-2] and f"{long}:2: prompt of" in errs[-2]
    assert errs[-1].endswith(f"1 problem(s) in {long}; nothing was generated") and not out.exists()

    for text, msg in (("\n\n", "no prompts"), (None, "cannot read prompt file")):
        f = tmp_path / "empty.jsonl"
        if text is not None:
            f.write_text(text)
        else:
            f = tmp_path / "missing.jsonl"
        code, _, err = _run(["batch", "--prompts", f, "--out", out], capsys)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
