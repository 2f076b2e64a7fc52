"""Janus family at full size without the weights: every key and shape of the real Janus-Pro-1B and
-7B state dicts maps onto the presets' abstract parameters with nothing left on either side, the
real-size forward passes trace under `jax.eval_shape` (no memory, no compile), and family detection
(folder, converted checkpoint, neither family; library and `janusflow-convert`)."""

import json
import re

import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURES, JANUS_DIR, TINY_DIR
from flax import nnx

import janusflow_jax
from janusflow_jax import weights
from janusflow_jax.base import _understanding_logits
from janusflow_jax.config import ConfigError
from janusflow_jax.janus.config import JANUS_PRO_1B, JANUS_PRO_7B, from_official_json
from janusflow_jax.janus.model import JanusModel, _sample_codes, _vq_decode, abstract_module
from janusflow_jax.janus.weights import OFFICIAL_IGNORED, official_rules
from janusflow_jax.sampling.decode import Sampler

LISTINGS = {"1b": ("janus-pro-1b-state-dict.json", JANUS_PRO_1B), "7b": ("janus-pro-7b-state-dict.json", JANUS_PRO_7B)}
# stored in the official checkpoints, never run: timm's attention-pool head (ignore_head=True) and
# the VQ's codebook-usage training statistics
NEVER_RUN = re.compile(r"vision_model\.vision_tower\.attn_pool\..*|gen_vision_model\.quantize\.codebook_used")
_DT = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float16": np.float16}


def _listing(name):
    d = json.loads((FIXTURES / "full-size" / name).read_text())
    return d, {t["key"]: (tuple(t["shape"]), t["dtype"]) for t in d["tensors"]}


def _convert(tensors, cfg, targets):
    """convert_state_dict over zero-strided dummies of the listed shapes/dtypes (no memory)."""
    dummies = {k: np.broadcast_to(np.zeros((), _DT[dt]), s) for k, (s, dt) in tensors.items()}
    return weights.convert_state_dict(
        list(tensors), dummies.__getitem__, targets, official_rules(cfg), OFFICIAL_IGNORED, materialize=False
    )


@pytest.fixture(scope="module")
def abstract():
    cache = {}

    def get(size):
        if size not in cache:
            cache[size] = abstract_module(LISTINGS[size][1])
        return cache[size]

    return get


@pytest.mark.parametrize("size", sorted(LISTINGS))
def test_real_config_parses_to_the_preset(size):
    name, preset = LISTINGS[size]
    d, _ = _listing(name)
    cfg = from_official_json(d["config"])
    assert cfg == preset
    assert cfg.num_gen_tokens == 576 and cfg.gen_grid == 24 and cfg.siglip.num_patches == 576
    assert cfg.llm.hidden_size == d["resolved_language_config"]["hidden_size"]
    assert cfg.llm.num_hidden_layers == d["resolved_language_config"]["num_hidden_layers"]


@pytest.mark.parametrize("size", sorted(LISTINGS))
def test_real_keys_and_shapes(size, abstract):
    name, preset = LISTINGS[size]
    d, tensors = _listing(name)
    assert len(tensors) == d["num_tensors"] == {"1b": 882, "7b": 936}[size]
    targets = weights.param_targets(abstract(size))
    out = _convert(tensors, preset, targets)
    assert set(out) == set(targets)
    # what the ignore list drops is exactly the never-run tensors (nothing else silently skipped)
    skip = [re.compile(p) for p in OFFICIAL_IGNORED]
    ignored = {k for k in tensors if any(rx.fullmatch(k) for rx in skip)}
    assert ignored == {k for k in tensors if NEVER_RUN.fullmatch(k)} and len(ignored) == 14
    n_ignored = sum(int(np.prod(tensors[k][0])) for k in ignored)
    ours = sum(int(np.prod(s)) for s, _ in targets.values())
    assert ours + n_ignored == d["num_params"]  # every parameter of ours is a real one, and vice versa
    assert sum(int(np.prod(s)) for s, _ in tensors.values()) == d["num_params"]


def test_a_dropped_or_extra_key_is_reported_by_name(abstract):
    _, tensors = _listing("janus-pro-1b-state-dict.json")
    targets = weights.param_targets(abstract("1b"))
    broken = dict(tensors)
    broken.pop("language_model.model.layers.17.self_attn.k_proj.weight")
    broken.pop("gen_head.vision_head.bias")
    broken["gen_head.vision_head.scale"] = ((16384,), "bfloat16")
    with pytest.raises(weights.ConversionError) as e:
        _convert(broken, JANUS_PRO_1B, targets)
    msg = str(e.value)
    assert "k_proj" in msg and "17" in msg, msg
    assert "gen_head.vision_head.bias" in msg and "gen_head.vision_head.scale" in msg, msg


def test_full_size_forward_shapes(abstract):
    """Janus-Pro-7B understanding logits, the 576-token image sampler and the VQ decode, traced with
    jax.eval_shape through the jitted programs the model object runs (no FLOPs, no memory)."""
    cfg = JANUS_PRO_7B
    gd, st = nnx.split(abstract("7b"), nnx.Param)
    sds = jax.ShapeDtypeStruct
    t = 576 + 24  # 576 image slots and some text
    logits = jax.eval_shape(
        lambda st, *a: _understanding_logits(gd, st, *a),
        st,
        sds((1, t), np.int32),
        sds((1, 1, 384, 384, 3), np.float32),
        sds((1, t), np.bool_),
        sds((1, 1, 576), np.bool_),
        sds((1, t), np.int32),
    )
    assert logits.shape == (1, t, 102400) and logits.dtype == np.float32

    opts = (cfg.num_gen_tokens, Sampler(greedy=True, per_row_keys=True), 100015, False, 0, None)
    key = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 1))
    f32 = sds((), np.float32)

    def sample(st, ids, mask, keys, temperature, top_p, w):
        return _sample_codes(gd, st, ids, mask, None, None, keys, temperature, top_p, w, None, opts=opts)

    l = 32
    out = jax.eval_shape(sample, st, sds((1, l), np.int32), sds((1, l), np.int32), key, f32, f32, f32)
    assert out.tokens.shape == (1, 576) and out.tokens.dtype == np.int32

    img = jax.eval_shape(lambda st, c: _vq_decode(gd, st, c), st, sds((1, 24, 24), np.int32))
    assert img.shape == (1, 384, 384, 3) and img.dtype == np.float32


# --- family detection ---------------------------------------------------------------------------


def _params_equal(a, b):
    fa, ta = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(a))
    fb, tb = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(b))
    assert ta == tb
    for (path, x), (_, y) in zip(fa, fb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    return len(fa)


def test_family_detection_and_janus_checkpoint(janus_model, tiny_model, tmp_path):
    from janusflow_jax.convert import convert

    assert isinstance(janus_model, JanusModel) and janus_model.family == "janus"
    assert tiny_model.family == "janusflow" and not isinstance(tiny_model, JanusModel)
    out = convert(str(JANUS_DIR), str(tmp_path / "ckpt"), dtype="float32")
    meta = json.loads((tmp_path / "ckpt" / "metadata.json").read_text())
    assert meta["family"] == "janus" and meta["dtype"] == "float32"
    loaded = janusflow_jax.load(out)
    assert isinstance(loaded, JanusModel) and loaded.family == "janus"
    assert loaded.cfg == janus_model.cfg and loaded.cfg.gen_image_size == janus_model.cfg.gen_image_size
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (janus_model.bos_id, janus_model.eos_id, janus_model.pad_id)
    assert _params_equal(loaded.params, janus_model.params) > 100  # bit-identical, every leaf


def _neither(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    return d


def test_neither_family_is_refused(tmp_path):
    d = _neither(tmp_path)
    with pytest.raises(ConfigError) as e:
        janusflow_jax.load(str(d))
    msg = str(e.value)
    assert str(d / "config.json") in msg and "neither" in msg, msg
    assert TINY_DIR.is_dir()  # (the JanusFlow side of detection: `tiny_model` above)


def test_convert_cli_on_janus_and_neither(tmp_path, capsys):
    from convert.torch_to_orbax import main

    out = tmp_path / "ckpt16"
    assert main([str(JANUS_DIR), "--out", str(out)]) == 0  # default dtype bfloat16
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["family"] == "janus" and meta["dtype"] == "bfloat16"
    assert f"wrote {out}" in capsys.readouterr().out
    bad, out2 = _neither(tmp_path), tmp_path / "nope"
    assert main([str(bad), "--out", str(out2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("janusflow-convert: error:") and "config.json" in err[0] and "neither" in err[0], err
    assert not out2.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nope")], "temporary folder left behind"
