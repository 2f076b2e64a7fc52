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
    # the ShallowUViT shards like the rest (the XLA bug on this mesh is left to `data_parallel`, below)
    uvit_block = p["vision_gen_enc_model"]["mid_block"]["res_blocks"][0]
    assert spec(uvit_block["depthwise"]["kernel"]) == P(None, None, None, "tensor")
    assert spec(uvit_block["channelwise_linear_1"]["kernel"]) == P("fsdp", "tensor")
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


def _convnext_like(x, w1, w2, k, r):
    """A 3×3 depthwise conv (pad + shifted slices) → channel MLP → residual: the ConvNeXt pattern."""
    h = x.shape[1]
    xp = jax.numpy.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    d = sum(xp[:, i : i + h, j : j + h, :] * k[i, j] for i in range(3) for j in range(3))
    return jax.numpy.sum((x + jax.nn.gelu(d @ w1) @ w2) * r)


def test_data_parallel_avoids_xla_convnext_gradient_bug():
    """XLA bug that `sharding.data_parallel` exists for: batch on ("data","fsdp"), channel MLP weights
    [fsdp, tensor] / [tensor, fsdp], depthwise kernel on tensor, {data:2, fsdp:2, tensor:2}. Plain
    `jax.jit` with those shardings gives wrong dx / dk on jax 0.9–0.10 (printed, not asserted: a fixed
    XLA may get it right); the same gradients through `data_parallel` must equal the unsharded ones."""
    from jax.sharding import NamedSharding

    from janusflow_jax.sharding import data_parallel, use_mesh

    rng = np.random.default_rng(0)
    n = lambda *s: (0.3 * rng.normal(size=s)).astype(np.float32)  # noqa: E731
    x, w1, w2, k, r = n(8, 4, 4, 64), n(64, 256), n(256, 64), n(3, 3, 64), n(8, 4, 4, 64)
    want = jax.grad(_convnext_like, argnums=(0, 1, 2, 3))(x, w1, w2, k, r)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    w_specs = (P("fsdp", "tensor"), P("tensor", "fsdp"), P(None, None, "tensor"))
    specs = (P(("data", "fsdp")), *w_specs, P(("data", "fsdp")))
    with use_mesh(mesh):
        args = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip((x, w1, w2, k, r), specs)]
        plain = jax.jit(jax.grad(_convnext_like, argnums=(0, 1, 2, 3)))(*args)

        def reordered(w1, w2, k, x, r):  # data_parallel takes the parameters first
            return _convnext_like(x, w1, w2, k, r)

        def grads(x, w1, w2, k, r):
            g = jax.grad(data_parallel(reordered, w_specs), argnums=(0, 1, 2, 3))(w1, w2, k, x, r)
            return (g[3], *g[:3])

        got = jax.jit(grads)(*args)
    err = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())  # noqa: E731
    print("plain jit relative errors (dx, dw1, dw2, dk):", [f"{err(a, b):.1e}" for a, b in zip(plain, want)])
    for name, a, b in zip(("dx", "dw1", "dw2", "dk"), got, want):
        assert err(a, b) < 1e-5, name
    assert got[1].sharding.spec == P("fsdp", "tensor")  # gradients come back sharded like their parameters
