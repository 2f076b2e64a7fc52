"""janusflow-convert: the good path (HF folder → Orbax → same numbers) and every bad input
(clear one-line error naming the problem, non-zero exit, no output folder)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from conftest import TINY_DIR, rel_err
from convert.torch_to_orbax import main as convert_main
from janusflow_jax.safetensors_io import SafetensorsFile, save_safetensors


def _copy_tiny(tmp_path: pathlib.Path) -> pathlib.Path:
    dst = tmp_path / "model"
    shutil.copytree(TINY_DIR, dst, ignore=shutil.ignore_patterns("*.npz", "manifest.json"))
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def _rewrite(model_dir: pathlib.Path, edit) -> None:
    path = model_dir / "model.safetensors"
    f = SafetensorsFile(str(path))
    tensors = {k: np.array(f.get(k)) for k in f.keys()}
    del f
    edit(tensors)
    save_safetensors(str(path), tensors)


def _run(args, capsys):
    code = convert_main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


def test_convert_then_load_gives_the_same_numbers(tmp_path, capsys, tiny_model, npz):
    import janusflow_jax

    model_dir = _copy_tiny(tmp_path)
    out = tmp_path / "ckpt"
    code, _ = _run([model_dir, "--out", out, "--dtype", "float32"], capsys)
    assert code == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["dtype"] == "float32" and meta["config"]["language_config"]["hidden_size"] == 64
    assert any(k.endswith("model.safetensors") for k in meta["sources"])
    assert (out / "tokenizer.json").is_file()
    loaded = janusflow_jax.load(str(out))
    d = npz("llm")
    assert rel_err(loaded.llm_logits(d["input_ids"]), d["logits"]) < 1e-4
    np.testing.assert_array_equal(
        np.asarray(loaded.llm_logits(d["input_ids"])), np.asarray(tiny_model.llm_logits(d["input_ids"]))
    )
    v = npz("vae")
    assert rel_err(loaded.vae_encode(np.moveaxis(v["encode_x"], 1, -1)), np.moveaxis(v["encode_mean"], 1, -1)) < 1e-4
    # bf16 checkpoint (the default) loads into float32 and bf16 models
    out16 = tmp_path / "ckpt16"
    assert _run([model_dir, "--out", out16], capsys)[0] == 0
    m16 = janusflow_jax.load(str(out16), dtype="bfloat16")
    assert m16.params["language_model"]["lm_head"][...].dtype == ml_dtypes.bfloat16
    m32 = janusflow_jax.load(str(out16))
    assert rel_err(m32.llm_logits(d["input_ids"]), d["logits"]) < 0.05  # weights rounded to bf16


def _drop(k):
    return lambda t: t.pop(k)


CASES = {
    "missing tensor": (
        lambda d: _rewrite(d, _drop("vision_gen_dec_aligner.bias")),
        "missing tensor",
        "vision_gen_dec_aligner.bias",
    ),
    "missing layer": (
        lambda d: _rewrite(d, _drop("language_model.model.layers.1.mlp.up_proj.weight")),
        "missing tensor",
        "layers [1]",
    ),
    "extra tensor": (
        lambda d: _rewrite(d, lambda t: t.__setitem__("language_model.model.extra.weight", np.zeros(3, np.float32))),
        "unexpected tensor",
        "language_model.model.extra.weight",
    ),
    "wrong shape": (
        lambda d: _rewrite(d, lambda t: t.__setitem__("vision_gen_enc_aligner.weight", np.zeros((64, 31), np.float32))),
        "vision_gen_enc_aligner.weight",
        "shape",
    ),
    "wrong dtype": (
        lambda d: _rewrite(d, lambda t: t.__setitem__("beg_of_und_embed", np.zeros((1, 64), np.int32))),
        "beg_of_und_embed",
        "dtype int32",
    ),
    "truncated file": (lambda d: _truncate(d / "model.safetensors"), "truncated", "model.safetensors"),
    "invalid config json": (
        lambda d: (d / "config.json").write_text('{"language_config": '),
        "config.json",
        "invalid JSON",
    ),
    "unknown cls": (
        lambda d: _edit_config(d, lambda c: c["vision_gen_enc_config"].__setitem__("cls", "DeepUViT")),
        "cls='DeepUViT'",
        "unknown",
    ),
    "unknown field": (
        lambda d: _edit_config(d, lambda c: c["language_config"].__setitem__("num_experts", 8)),
        "unknown field",
        "num_experts",
    ),
    "missing field": (
        lambda d: _edit_config(d, lambda c: c["language_config"].pop("vocab_size")),
        "missing required field",
        "vocab_size",
    ),
    "pickle file": (lambda d: _to_pickle(d), "pickle", "pytorch_model.bin"),
    "vae missing": (lambda d: shutil.rmtree(d / "vae"), "VAE folder not found", "vae"),
    "vae tensor wrong shape": (lambda d: _rewrite_vae(d), "decoder.conv_out.weight", "shape"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


def _edit_config(d, fn):
    c = json.loads((d / "config.json").read_text())
    fn(c)
    (d / "config.json").write_text(json.dumps(c))


def _to_pickle(d):
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


def _rewrite_vae(d):
    path = d / "vae" / "diffusion_pytorch_model.safetensors"
    f = SafetensorsFile(str(path))
    t = {k: np.array(f.get(k)) for k in f.keys()}
    t["decoder.conv_out.weight"] = np.zeros((3, 16, 3, 1), np.float32)
    save_safetensors(str(path), t)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly(case, tmp_path, capsys):
    breaker, *needles = CASES[case]
    model_dir = _copy_tiny(tmp_path)
    breaker(model_dir)
    out = tmp_path / "out"
    code, line = _run([model_dir, "--out", out], capsys)
    assert code != 0
    assert line.startswith("janusflow-convert: error:"), line
    for n in needles:
        assert n in line, (n, line)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporary folder left behind"


def test_refuses_to_overwrite(tmp_path, capsys):
    model_dir = _copy_tiny(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, line = _run([model_dir, "--out", out], capsys)
    assert code != 0 and "already exists" in line and "--overwrite" in line
    assert (out / "keep.txt").read_text() == "mine"
    assert _run([model_dir, "--out", out, "--overwrite"], capsys)[0] == 0
    assert (out / "metadata.json").is_file() and not (out / "keep.txt").exists()


def test_console_script_exit_code(tmp_path):
    exe = shutil.which("janusflow-convert")
    cmd = [exe] if exe else [sys.executable, "-m", "convert.torch_to_orbax"]
    r = subprocess.run(
        cmd + [str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert r.returncode != 0
    assert "nope" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()
    r = subprocess.run(cmd + ["--dtype", "float64", "x", "--out", "y"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr
