"""Real-size weights on one host, scaled down: a ~300 MB random Janus checkpoint (official layout,
two bfloat16 safetensors shards + index, written streamed by `convert/bench_memory.py`) converts
and loads onto an 8-device mesh in child processes whose peak resident memory (VmHWM), above a
baseline child (python + imports + JAX on 8 CPU devices), stays within 1.1x the checkpoint's bytes.
Before streaming (whole tree in host memory, Orbax's defensive copy, files memory-mapped; restore
staging every shard on the host beside its device copy) the same children measured about 2x and
1.4x."""

import json

import jax
import numpy as np
import pytest

from conftest import JANUS_DIR
from convert import bench_memory
from janusflow_jax import checkpoint
from janusflow_jax.janus.config import from_official_json
from janusflow_jax.janus.model import abstract_module
from janusflow_jax.weights import param_targets, unflatten_params

BOUND = 1.1
# The first shards a process reads grow tensorstore's reader-thread heaps (glibc arenas) by ~60 MB
# once, whatever the model's size (measured: the 1st of 12 equal leaves costs 1.45x its bytes, the
# 3rd on 1.0x). At 300 MB that one-time cost is 0.2x, so the load is bounded by 1.1x + this.
READER_WARMUP = 100e6


def _config() -> dict:
    """The tiny Janus config with a Llama of ~300 MB in bfloat16 (12 layers x 1024 wide, 4096 vocab):
    every tensor <= 6 MB, so the bound measures streaming, not one big tensor."""
    d = json.loads((JANUS_DIR / "config.json").read_text())
    d["language_config"].update(
        hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=16,
        num_hidden_layers=12, vocab_size=4096, torch_dtype="bfloat16",
    )  # fmt: skip
    for k in ("aligner_config", "gen_aligner_config"):
        d[k]["params"]["n_embed"] = 1024
    d["gen_head_config"]["params"].update(n_embed=1024, image_token_embed=1024)
    d["torch_dtype"] = "bfloat16"
    return d


def _listing(d: dict):
    """(key, torch shape, dtype) of every official tensor of this config (the project's inverted
    weight table, as the Janus bench writes them) plus the stored-but-unused ones."""
    from sample.janus_bench_weights import official_state_dict, unused_official_tensors

    cfg = from_official_json(d)
    targets = param_targets(abstract_module(cfg))
    dummies = unflatten_params({p: np.broadcast_to(np.zeros((), np.float32), s) for p, (s, _) in targets.items()})
    out = [(k, a.shape, "bfloat16") for k, a in official_state_dict(cfg, dummies).items()]
    return out + [(k, a.shape, "float32") for k, a in unused_official_tensors(cfg).items()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("memtest")
    d = _config()
    n = bench_memory.write_folder(root / "model", d, _listing(d), layout="safetensors-2", tokenizer_dir=JANUS_DIR)
    return root, n


def test_convert_and_load_stream_within_the_bound(folder):
    root, nbytes = folder
    assert 280e6 < nbytes < 360e6
    base = bench_memory.run_child("baseline")["peak_rss"]
    dst = root / "ckpt"
    conv = bench_memory.run_child("convert", src=str(root / "model"), dst=str(dst))
    assert conv["rc"] == 0
    load = bench_memory.run_child("load", dst=str(dst), mesh={"data": 1, "fsdp": 2, "tensor": 4})
    convert_extra, load_extra = conv["peak_rss"] - base, load["peak_rss"] - base
    print(f"baseline {base / 1e6:.0f} MB; convert +{convert_extra / 1e6:.0f} MB, load +{load_extra / 1e6:.0f} MB "
          f"for {nbytes / 1e6:.0f} MB ({load['param_bytes'] / 1e6:.0f} MB of parameters, "
          f"{load['device_bytes'] / 1e6:.0f} MB on the 8 devices)")  # fmt: skip
    assert convert_extra <= BOUND * nbytes, (convert_extra, nbytes)
    assert load_extra <= BOUND * load["param_bytes"] + READER_WARMUP, (load_extra, load["param_bytes"])


def test_streamed_checkpoint_restores_the_source_bits(folder):
    """The values the streaming converter wrote are the source tensors, mapped (spot check of a
    stacked leaf and a whole leaf against the safetensors shards), and the sharded restore equals
    the plain host restore bit for bit."""
    from janusflow_jax.weight_files import open_weights

    root, _ = folder
    dst = root / "ckpt"
    if not dst.exists():  # run on its own: convert here
        from janusflow_jax.convert import convert

        convert(str(root / "model"), str(dst))
    host = checkpoint.restore_params(str(dst))["janus"]
    src = open_weights(str(root / "model"))
    lm = host["language_model"]
    np.testing.assert_array_equal(
        np.asarray(lm["model"]["layers"]["mlp"]["down_proj"][7]), np.asarray(src.get("language_model.model.layers.7.mlp.down_proj.weight")).T
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(lm["lm_head"]), np.asarray(src.get("language_model.lm_head.weight")).T)
    from janusflow_jax.sharding import make_mesh

    mesh = make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    from janusflow_jax.base import restore_target

    cfg = from_official_json(json.loads((root / "model" / "config.json").read_text())).with_dtype("bfloat16")
    target = {"janus": restore_target(abstract_module(cfg, mesh), mesh)}
    sharded = checkpoint.restore_params(str(dst), target)["janus"]
    flat_a = jax.tree_util.tree_leaves_with_path(host)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(sharded))
    for path, a in flat_a:
        b = flat_b[path]
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), jax.tree_util.keystr(path)
