"""Sharding smoke test: logical axis names on every parameter, expected PartitionSpecs, and on an
8-device CPU mesh the sharded forward passes equal the single-device ones."""

import re

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


def test_layerwise_gather_holds_one_layer_and_equals_gather_once():
    """FSDP over 8 devices, a scanned 4-layer Llama: with `layerwise` the scan body gathers its layer's
    weights (ZeRO-3) instead of `data_parallel` gathering the whole stack up front. Same loss and
    gradients (gradients still come back fsdp-sharded); the all-gathers of the stacked weights move
    into the loop; the program's temporaries shrink by about the stack's gathered bytes."""
    from jax.sharding import NamedSharding

    from janusflow_jax.config import LlamaConfig
    from janusflow_jax.nn.llama import LlamaModel
    from janusflow_jax.sharding import data_parallel, layerwise_leaves, param_specs, use_mesh

    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4)  # fmt: skip
    mesh = make_mesh({"fsdp": 8})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 128)).astype(np.float32)
    pos = np.broadcast_to(np.arange(16, dtype=np.int32), (8, 16))
    with use_mesh(mesh):
        model = nnx.eval_shape(lambda: LlamaModel(cfg, rngs=nnx.Rngs(0)))
        graphdef, abstract = nnx.split(model, nnx.Param)
        shapes = nnx.to_pure_dict(abstract)
        specs = param_specs(graphdef, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), shapes), mesh)
        params = jax.tree.map(
            lambda a, sp: jax.device_put((0.05 * rng.normal(size=a.shape)).astype(np.float32), NamedSharding(mesh, sp)),
            shapes, specs, is_leaf=lambda a: isinstance(a, jax.ShapeDtypeStruct),
        )  # fmt: skip
        assert specs["layers"]["mlp"]["up_proj"] == P(None, "fsdp", "tensor")
        xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
        ps = jax.device_put(pos, NamedSharding(mesh, P(("data", "fsdp"))))

        def loss(p, x, pos):
            h = nnx.merge(graphdef, p).forward(x, pos).hidden
            return jax.numpy.sum(h * h)

        def step(layerwise):
            lw = None
            if layerwise:
                lw = (layerwise_leaves(graphdef, params, mesh),)
                assert lw[0]["layers"]["self_attn"]["q_proj"] and not lw[0]["norm"]["weight"]
            return jax.jit(jax.value_and_grad(data_parallel(loss, (specs,), lw)))

        results, texts, temps = {}, {}, {}
        for lw in (False, True):
            compiled = step(lw).lower(params, xs, ps).compile()
            texts[lw], temps[lw] = compiled.as_text(), compiled.memory_analysis().temp_size_in_bytes
            results[lw] = compiled(params, xs, ps)
    (l0, g0), (l1, g1) = results[False], results[True]
    assert float(l1) == pytest.approx(float(l0), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    assert g1["layers"]["mlp"]["up_proj"].sharding.spec[:2] == (None, "fsdp")

    def gathers_in_loops(text):  # all-gathers inside the computations that `while` ops run as their body
        comps = {c.split(" ", 1)[0].lstrip("%"): c for c in text.split("\n\n") if c.startswith("%")}
        bodies = set(re.findall(r"body=%([\w.\-]+)", text))
        return sum(comps[b].count(" all-gather(") + comps[b].count(" all-gather-start(") for b in bodies)

    assert gathers_in_loops(texts[False]) == 0 and gathers_in_loops(texts[True]) >= 7  # 7 kernels a layer
    stack = sum(a.size * 4 for a in jax.tree.leaves(shapes["layers"]))
    print(f"temporaries: gather once {temps[False] / 1e6:.2f} MB, layer by layer {temps[True] / 1e6:.2f} MB; "
          f"the whole stack {stack / 1e6:.2f} MB")  # fmt: skip
    assert temps[False] - temps[True] > 0.5 * stack
