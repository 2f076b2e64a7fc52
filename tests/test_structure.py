"""Full-size structure without the weights: every key and shape of the real JanusFlow-1.3B and
SDXL-VAE checkpoints maps onto the abstract parameters of the presets, nothing left on either side."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import FIXTURES
from janusflow_jax import JANUSFLOW_1_3B, SDXL_VAE, weights
from janusflow_jax.config import from_official_json
from janusflow_jax.model import abstract_modules


def _listing(name):
    d = json.loads((FIXTURES / "full-size" / name).read_text())
    return d, {t["key"]: tuple(t["shape"]) for t in d["tensors"]}


def _check(shapes, targets, rules, ignored):
    zeros = {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()}  # no memory
    out = weights.convert_state_dict(shapes, zeros.__getitem__, targets, rules, ignored, materialize=False)
    assert set(out) == set(targets)


@pytest.fixture(scope="module")
def abstract_full():
    return abstract_modules(JANUSFLOW_1_3B, SDXL_VAE)


def test_real_config_parses_to_the_preset():
    d, _ = _listing("janusflow-1.3b-state-dict.json")
    cfg = from_official_json(d["config"])
    assert cfg == JANUSFLOW_1_3B
    assert cfg.num_gen_tokens(SDXL_VAE) == 576 and cfg.siglip.num_patches == 576


def test_janusflow_1_3b_keys_and_shapes(abstract_full):
    d, shapes = _listing("janusflow-1.3b-state-dict.json")
    assert len(shapes) == d["num_tensors"] == 587
    targets = weights.param_targets(abstract_full[0])
    _check(shapes, targets, weights.JANUSFLOW_RULES, weights.JANUSFLOW_IGNORED)
    used = sum(int(np.prod(s)) for k, s in shapes.items() if ".attn_pool." not in k)
    ours = sum(int(np.prod(s)) for s, _ in targets.values())
    assert ours == used  # every parameter of ours is a real one (attn_pool head: stored, never run)
    ignored = sum(int(np.prod(s)) for k, s in shapes.items() if ".attn_pool." in k)
    assert ours + ignored == d["num_params"]


def test_sdxl_vae_keys_and_shapes(abstract_full):
    d, shapes = _listing("sdxl-vae-state-dict.json")
    assert len(shapes) == 248
    targets = weights.param_targets(abstract_full[1])
    _check(shapes, targets, weights.VAE_RULES, weights.VAE_IGNORED)
    assert sum(int(np.prod(s)) for s, _ in targets.values()) == d["num_params"]


def test_a_missing_or_misshapen_key_is_caught(abstract_full):
    _, shapes = _listing("janusflow-1.3b-state-dict.json")
    targets = weights.param_targets(abstract_full[0])
    broken = dict(shapes)
    broken.pop("language_model.model.layers.17.self_attn.k_proj.weight")
    broken["vision_gen_dec_model.out_convs.0.unpatch_conv.weight"] = (12, 1536, 1, 1)
    with pytest.raises(weights.ConversionError) as e:
        _check(broken, targets, weights.JANUSFLOW_RULES, weights.JANUSFLOW_IGNORED)
    msg = str(e.value)
    assert "k_proj (layers [17])" in msg and "unpatch_conv.weight" in msg


def test_full_size_forward_shapes(abstract_full):
    """The whole 1.3B forward traced with jax.eval_shape (no FLOPs, no memory)."""
    jf, _ = abstract_full
    gd, st = nnx.split(jf)

    def gen(st, z, t):
        m = nnx.merge(gd, st)
        x, t_emb, skip = m.gen_encode(z, t)
        return m.gen_tokens(x), t_emb, skip

    tok, t_emb, skip = jax.eval_shape(
        gen, st, jax.ShapeDtypeStruct((2, 48, 48, 4), np.float32), jax.ShapeDtypeStruct((2,), np.float32)
    )
    assert tok.shape == (2, 576, 2048) and t_emb.shape == (2, 2048) and skip.shape == (2, 24, 24, 768)

    def und(st, px):
        return nnx.merge(gd, st).image_embeds(px)

    emb = jax.eval_shape(und, st, jax.ShapeDtypeStruct((1, 1, 384, 384, 3), np.float32))
    assert emb.shape == (1, 577, 2048)
