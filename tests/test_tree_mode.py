"""Flax plans to make tree mode the default: the model loads and matches the fixtures with
NNX_GRAPH_MODE=false too (run in a subprocess, since the flag is read at import)."""

import os
import subprocess
import sys

from conftest import TINY_DIR

SCRIPT = f"""
import numpy as np, jax
jax.config.update("jax_default_matmul_precision", "highest")
from flax import nnx
assert not nnx.set_graph_mode.current_value(), "tree mode is not active"
import janusflow_jax
m = janusflow_jax.load({str(TINY_DIR)!r})
d = np.load({str(TINY_DIR / "llm.npz")!r})
err = np.abs(np.asarray(m.llm_logits(d["input_ids"])) - d["logits"]).max() / np.abs(d["logits"]).max()
s = np.load({str(TINY_DIR / "sampling.npz")!r})
z = m.sample_latents(s["prompt_ids"], np.moveaxis(s["z0"], 1, -1), num_steps=3, cfg_weight=2.0)
zref = np.moveaxis(s["z_final"], 1, -1)
errz = np.abs(np.asarray(z) - zref).max() / np.abs(zref).max()
print(err, errz)
assert err < 1e-4 and errz < 1e-4
"""


def test_tree_mode_matches_fixtures():
    env = dict(os.environ, NNX_GRAPH_MODE="false", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
