"""Ahead-of-time plans (janusflow_jax/plan.py, `janusflow-train --plan`): the tiny config's real
train step compiled for a TPU topology description (v5e:2x2) and for a GPU target, per-device bytes
against a count made here from the fixture's weight files, an over-sized batch reported as not
fitting, and the report's last line."""

import glob
import json
import math
import os
import re
import struct
import subprocess
import sys

import pytest
from conftest import FIXTURES

from janusflow_jax import plan
from train.cli import main as train_main

import libtpu  # noqa: F401,E402  the test extra installs it: a missing wheel fails here, it is not skipped

TINY_CFG = str(FIXTURES.parent.parent / "train" / "configs" / "tiny.yaml")
# text rows only: the same train state (every module, stage 2), the smallest program to compile
FAST = ["data.mix.gen=0", "data.mix.und=0", "data.mix.text=8", "data.text_len=32", "mesh.data=-1"]


def _safetensors_numel(path, skip=()):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {
        k: math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__" and not any(s in k for s in skip)
    }


def _hand_count():
    """(all parameters, trainable in stage 2) of TrainModules for tiny.yaml, from the weight files:
    JanusFlow's tensors (the SigLIP attention-pool head is never run), the VAE's, and the REPA head
    (3 linears, LLM width 64 → repa_hidden 64 → SigLIP width 64)."""
    jf = _safetensors_numel(FIXTURES / "janusflow-tiny" / "model.safetensors", skip=("attn_pool",))
    vae = sum(_safetensors_numel(FIXTURES / "janusflow-tiny" / "vae" / "diffusion_pytorch_model.safetensors").values())
    d, h, w = 64, 64, 64
    repa = (d * h + h) + (h * h + h) + (h * w + w)
    siglip = sum(v for k, v in jf.items() if k.startswith("vision_und_enc_model."))
    total = sum(jf.values()) + vae + repa
    return total, total - vae - siglip


def _last(out: str):
    m = plan.LAST_LINE_RE.match(out.strip().splitlines()[-1])
    assert m, out.strip().splitlines()[-1]
    return m


def _bytes(out: str) -> dict:
    line = next(x for x in out.splitlines() if x.strip().startswith("bytes: "))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_tpu_plan_bytes_match_hand_count(capsys):
    rc = train_main(["--config", TINY_CFG, "--plan", "--target", "v5e-4", *FAST])
    out = capsys.readouterr().out
    assert rc == 0, out
    m = _last(out)
    assert m.group(1) == "fits" and m.group(4) == "4" and float(m.group(3)) == 16
    assert "tpu topology v5e:2x2" in out
    n_all, n_train = _hand_count()
    b = _bytes(out)
    # mesh data=4: every device holds the whole fp32 state
    assert b["params"] == 4 * n_all
    assert 8 * n_train <= b["opt_state"] <= 8 * n_train + 64  # Adam mu + nu (fp32) + step counters
    assert b["ema"] == 4 * n_train  # tiny.yaml keeps an EMA of the trainable leaves
    assert b["batch"] == 2 * 32 * (4 + 4 + 4)  # text ids, mask (int32), loss_mask (f32): 8 rows / 4 shards
    assert b["total"] >= b["params"] + b["opt_state"] + b["ema"]
    assert "all-reduce" in out  # the data-parallel gradient sum


def test_gpu_plan(capsys):
    rc = train_main(["--config", TINY_CFG, "--plan", "--target", "8xH100", *FAST, "mesh.data=4", "mesh.fsdp=2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    m = _last(out)
    assert m.group(1) == "fits" and m.group(4) == "8"
    assert "cuda topology 1x1x8" in out and "mesh {'data': 4, 'fsdp': 2, 'tensor': 1}" in out
    b = _bytes(out)
    n_all, _ = _hand_count()
    assert b["params"] < 4 * n_all  # fsdp-sharded
    assert re.search(r"all-gather|reduce-scatter", out)


def test_oversized_batch_does_not_fit(capsys):
    big = ["data.mix.text=65536", "data.text_len=1024"]
    rc = train_main(["--config", TINY_CFG, "--plan", "--target", "v5e-4", *FAST, *big])
    out = capsys.readouterr().out
    assert rc == 3, out
    m = _last(out)
    assert m.group(1) == "does not fit" and float(m.group(2)) > 16 and m.group(5) == "0.0"
    assert "RESOURCE_EXHAUSTED" in out


def test_unknown_target_is_an_error(capsys):
    assert train_main(["--config", TINY_CFG, "--plan", "--target", "v9z-1", *FAST]) == 2
    assert "unknown target" in capsys.readouterr().err


def test_collectives_parse_loops():
    hlo = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %c = s32[] constant(24)
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %x = f32[8] get-tuple-element(%p), index=1
  %ag = bf16[4,1024]{1,0} all-gather(%x), replica_groups={{0,1,2,3}}, dimensions={0}
  ROOT %t = (s32[], f32[8]) tuple(%i, %x)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8] parameter(0)
  %w = (s32[], f32[8]) while(%t0), condition=%cond, body=%body
  %ar = f32[256]{0} all-reduce(%a), replica_groups=[2,4]<=[8], to_apply=%add
  ROOT %r = f32[8] get-tuple-element(%w), index=1
}
"""
    c = plan.parse_collectives(hlo, 8)
    assert c["all-gather"]["count"] == 24 and c["all-gather"]["bytes"] == 24 * 8192
    assert c["all-gather"]["traffic"] == pytest.approx(24 * 8192 * 3 / 4)
    assert c["all-reduce"]["count"] == 1 and c["all-reduce"]["traffic"] == pytest.approx(2 * 1024 * 3 / 4)


def test_targets_table():
    for t in plan.TARGETS.values():
        assert t.bf16_tflops > 0 and t.hbm_gib > 0 and t.hbm_gbs > 0 and t.ici_gbs > 0
    assert plan.TARGETS["v5p-128"].chips == 64  # v5p-N counts TensorCores



def test_no_tpu_probe_without_accelerator_device_files(tmp_path, monkeypatch):
    """With libtpu installed and JAX_PLATFORMS unset, the library picks the CPU up front only where
    no accelerator device file exists; an explicit JAX_PLATFORMS and a present device are left alone."""
    from janusflow_jax import _platforms

    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(_platforms, "ACCELERATOR_DEVICE_FILES", (str(tmp_path / "accel*"),))
    assert _platforms.skip_absent_tpu() and os.environ["JAX_PLATFORMS"] == "cpu"
    assert not _platforms.skip_absent_tpu()  # explicit (here: just set) wins
    monkeypatch.delenv("JAX_PLATFORMS")
    (tmp_path / "accel0").touch()
    assert not _platforms.skip_absent_tpu() and "JAX_PLATFORMS" not in os.environ
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


def test_plain_import_has_no_libtpu_start_up_errors():
    """End to end in a fresh interpreter without JAX_PLATFORMS (CI has no accelerator): CPU, and none
    of libtpu's initialisation errors."""
    from janusflow_jax import _platforms

    if any(glob.glob(p) for p in _platforms.ACCELERATOR_DEVICE_FILES):
        pytest.skip("this machine has an accelerator device file: JAX is meant to probe it here")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    code = "import janusflow_jax, jax, os; print(os.environ['JAX_PLATFORMS'], jax.devices()[0].platform)"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["cpu", "cpu"]
    assert "libtpu" not in r.stderr and "TPU_ACCELERATOR_TYPE" not in r.stderr, r.stderr[-2000:]


def test_janus_sampling_plan_counts_the_weights_every_step():
    """The tiny Janus's sampling program on v5e-4: it fits, and the HBM side of the estimate reads
    the device's weights once per LLM pass (XLA's cost analysis counts the 576-step loop body once,
    which made decoding look compute-bound: MFU 100%)."""
    from conftest import JANUS_DIR

    from janusflow_jax.janus.config import from_official_json

    cfg = from_official_json(json.loads((JANUS_DIR / "config.json").read_text()))
    p = plan.sample_plan("janus", cfg, None, "v5e-4", batch_per_device=1, prompt_len=16)
    assert p.compiled and p.fits, p.error
    n = cfg.num_gen_tokens
    assert p.min_hbm_bytes == p.bytes["params"] * n > p.hlo_bytes
    t = p.times()
    assert t["hbm"] == pytest.approx(p.min_hbm_bytes / (p.target.hbm_gbs * 1e9))
    assert t["hbm"] > t["compute"] and 0 < p.mfu < 0.5
    text = plan.report(p)
    assert "counts each loop body once" in text and "images/s per chip" in text, text
    assert "upper bound, not a prediction" not in text  # weight reads bound it, not the peak


def test_compute_bound_estimate_is_called_an_upper_bound():
    """A program whose roofline is the chip's peak (JanusFlow's sampling: 30 velocity evaluations of
    every row, collectives next to none) reports 100% as the bound it is, and images/s per chip."""
    t = plan.get_target("8xH100")
    flops = 8 * t.bf16_tflops * 1e12  # one second of all chips at peak
    p = plan.Plan(what="sample janusflow", target=t, mesh={"data": 8}, settings={"images": 64}, fits=True,
                  compiled=True, bytes={"total": 2**30}, hlo_flops=flops / 100, model_flops=flops,
                  min_hbm_bytes=1e9)  # fmt: skip
    assert p.times()["step"] == pytest.approx(1.0) and p.mfu == pytest.approx(1.0)
    text = plan.report(p)
    assert "upper bound, not a prediction" in text, text
    assert "64 images per 1.00 s program, 8.0 images/s per chip" in text, text
    assert text.splitlines()[-1] == "plan: fits, 1.00 GiB of 79.1 GiB per chip, 8 chips, estimated MFU 100.0%"
