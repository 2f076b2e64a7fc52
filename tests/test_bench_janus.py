"""The Janus benchmark scripts (sample/bench.py --family janus and its helpers), on the tiny fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample")
TINY = os.path.join(ROOT, "tests", "fixtures", "janus-pro-tiny")
sys.path.insert(0, SAMPLE)


def test_official_state_dict_is_the_fixture_file():
    """The exporter inverts the weight table exactly: the tiny fixture's parameters come back as the
    fixture's own official keys, shapes and values; what it adds is what the project drops."""
    import jax
    from flax import nnx
    from janus_bench_weights import official_state_dict, unused_official_tensors

    import janusflow_jax
    from janusflow_jax.safetensors_io import SafetensorsFile

    m = janusflow_jax.load(TINY)
    sd = official_state_dict(m.cfg, jax.tree.map(np.asarray, nnx.to_pure_dict(m.params)))
    f = SafetensorsFile(os.path.join(TINY, "model.safetensors"))
    for k, a in sd.items():
        np.testing.assert_array_equal(a, np.asarray(f.get(k), np.float32), err_msg=k)
    extra = unused_official_tensors(m.cfg)
    assert set(sd) | set(extra) == set(f.keys()) and not set(sd) & set(extra)
    for k, a in extra.items():
        assert a.shape == tuple(f.get(k).shape), k


def test_bench_janus_runs_end_to_end(tmp_path):
    """Random tiny weights → official folder (read back, checked) → token loop and VQ decode timed →
    table + JSON; the folder then loads strictly into transformers' port through the renames."""
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    for name in os.listdir(TINY):
        if name.endswith(".json") and name != "manifest.json":
            (cfg_dir / name).write_bytes(open(os.path.join(TINY, name), "rb").read())
    raw = json.loads((cfg_dir / "config.json").read_text())
    raw["gen_head_config"]["params"]["image_token_embed"] = raw["language_config"]["hidden_size"]  # transformers' constraint
    (cfg_dir / "config.json").write_text(json.dumps(raw))
    out, w = tmp_path / "out.json", tmp_path / "w"
    cmd = [sys.executable, os.path.join(SAMPLE, "bench.py"), "--family", "janus", "--config", str(cfg_dir), "--save",
           str(w), "--repeats", "1", "--what", "loop,vq", "--json", str(out), "--default-malloc"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "read back and checked" in r.stdout and "token step (all rows)" in r.stdout and "VQ decode per image" in r.stdout
    res = json.loads(out.read_text())
    assert res["loop"]["codes_ok"] and res["loop"]["step_ms"] > 0 and res["vq"]["flops_per_image"] > 0

    from bench_janus_official import build_hf_model

    build_hf_model(str(w), raw)  # load_state_dict(strict=True) inside
