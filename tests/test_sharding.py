"""Sharding smoke test: logical axis names on every parameter, expected PartitionSpecs, and on an
8-device CPU mesh the sharded forward passes equal the single-device ones."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import janusflow_jax
from conftest import TINY_DIR, nchw_to_nhwc, rel_err
from janusflow_jax.sharding import LOGICAL_RULES, make_mesh


@pytest.fixture(scope="module", params=[{"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 8}, {"data": 1, "tensor": -1}])
def sharded(request):
    assert len(jax.devices()) == 8
    mesh = make_mesh(request.param)
    return janusflow_jax.load(str(TINY_DIR), mesh=mesh)


def test_every_parameter_has_logical_names(tiny_model):
    known = {n for n, _ in LOGICAL_RULES}
    for tree in (tiny_model.params, tiny_model.vae_params):
        leaves = jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, nnx.Variable))
        assert leaves
        for v in leaves:
            names = v.get_metadata().get("out_sharding")
            assert names is not None and len(names) == v[...].ndim, v
            assert set(n for n in names if n is not None) <= known


def test_expected_partition_specs():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    m = janusflow_jax.load(str(TINY_DIR), mesh=mesh)
    p = m.params
    spec = lambda v: v[...].sharding.spec  # noqa: E731
    assert spec(p["language_model"]["model"]["layers"]["self_attn"]["q_proj"]) == P(None, "fsdp", "tensor", None)
    assert spec(p["language_model"]["model"]["layers"]["mlp"]["down_proj"]) == P(None, "tensor", "fsdp")
    assert spec(p["language_model"]["model"]["embed_tokens"]["embedding"]) == P("tensor", "fsdp")
    assert spec(p["language_model"]["lm_head"]) == P("fsdp", "tensor")
    assert spec(p["vision_und_enc_model"]["vision_tower"]["blocks"]["mlp"]["fc1"]["kernel"]) == P(
        None, "fsdp", "tensor"
    )
    assert spec(p["vision_gen_enc_model"]["mid_block"]["res_blocks"][0]["depthwise"]["kernel"]) == P(
        None, None, None, "tensor"
    )
    assert spec(p["language_model"]["model"]["norm"]["weight"]) == P("fsdp")
    # really distributed: a sharded leaf has addressable shards smaller than the whole
    q = p["language_model"]["model"]["layers"]["self_attn"]["q_proj"][...]
    assert q.addressable_shards[0].data.size * 4 == q.size


def test_sharded_equals_single_device(sharded, tiny_model, npz):
    d = npz("understanding")
    args = (d["input_ids"], nchw_to_nhwc(d["pixel_values"]), d["images_seq_mask"], d["images_emb_mask"])
    a = tiny_model.understanding_logits(*args, attention_mask=d["attention_mask"])
    b = sharded.understanding_logits(*args, attention_mask=d["attention_mask"])
    assert rel_err(b, a) < 1e-5
    s = npz("sampling")
    z0 = np.concatenate([nchw_to_nhwc(s["z0"])] * 2)  # batch 4 over the data axis
    za = tiny_model.sample_latents(s["prompt_ids"], z0, num_steps=3, cfg_weight=2.0)
    zb = sharded.sample_latents(s["prompt_ids"], z0, num_steps=3, cfg_weight=2.0)
    assert rel_err(zb, za) < 1e-5
    assert rel_err(sharded.vae_decode(zb), tiny_model.vae_decode(za)) < 1e-5


def test_sharded_decoding_and_images(sharded, tiny_model, npz):
    d = npz("understanding")
    args = (d["input_ids"], nchw_to_nhwc(d["pixel_values"]), d["images_seq_mask"], d["images_emb_mask"])
    a = tiny_model.generate_text(*args, attention_mask=d["attention_mask"], max_new_tokens=8)
    b = sharded.generate_text(*args, attention_mask=d["attention_mask"], max_new_tokens=8)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(b), d["generated_ids"])
    ia = tiny_model.generate_images(["a red cube", "a blue floor", "x", "y"], num_steps=2)
    ib = sharded.generate_images(["a red cube", "a blue floor", "x", "y"], num_steps=2)
    assert np.abs(ia.astype(int) - ib.astype(int)).max() <= 1
