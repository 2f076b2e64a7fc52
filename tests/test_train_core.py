"""Training core (the janusflow and vae tasks): each loss against NumPy, the training forward against the
(parity-tested) sampler, REPA's stop-gradient, stage freezing, gradient accumulation and sharded steps,
all through `training.build` (what the loop runs)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_DIR, rel_err
from train_harness import assert_step_matches, leaves_equal, sharded_step
from flax import nnx

from janusflow_jax.sampling import image as image_sampling
from janusflow_jax.sharding import make_mesh
from janusflow_jax.training import losses, state as S
from janusflow_jax.training.build import build
from janusflow_jax.training.config import load_config
from janusflow_jax.training.tasks import janusflow as jf_task

# --- the losses on hand-made inputs --------------------------------------------------------------


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_next_token_loss_matches_numpy_and_honours_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
    ids = rng.integers(0, 11, (3, 7)).astype(np.int32)
    mask = (rng.random((3, 7)) < 0.5).astype(np.float32)
    s, n = losses.next_token_sum(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
    lp = _np_log_softmax(logits.astype(np.float64))
    want = sum(-lp[b, i - 1, ids[b, i]] for b in range(3) for i in range(1, 7) if mask[b, i])
    assert float(n) == mask[:, 1:].sum()
    np.testing.assert_allclose(float(s), want, rtol=1e-5)
    # a masked position's target does not matter
    ids2 = ids.copy()
    ids2[mask == 0] = (ids2[mask == 0] + 1) % 11
    s2, _ = losses.next_token_sum(jnp.asarray(logits), jnp.asarray(ids2), jnp.asarray(mask))
    assert float(s2) == pytest.approx(float(s), rel=1e-6)


def test_rectified_flow_pair_and_squared_error():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    z0 = rng.normal(size=x.shape).astype(np.float32)
    t = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    zt, v = losses.rf_pair(jnp.asarray(x), jnp.asarray(z0), jnp.asarray(t))
    tb = t[:, None, None, None]
    np.testing.assert_allclose(np.asarray(zt), tb * x + (1 - tb) * z0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(v), x - z0, rtol=1e-6)
    pred = rng.normal(size=x.shape).astype(np.float32)
    s, n = losses.squared_error_sum(jnp.asarray(pred), v)
    np.testing.assert_allclose(float(s), ((pred - (x - z0)) ** 2).sum(), rtol=1e-5)
    assert float(n) == x.size


def test_logit_normal_times():
    t = np.asarray(losses.sample_t(jax.random.key(0), 40000, mean=0.5, std=0.8))
    assert t.min() > 0 and t.max() < 1
    logit = np.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.02 and abs(logit.std() - 0.8) < 0.02
    u = np.asarray(losses.sample_t(jax.random.key(1), 40000, kind="uniform"))
    assert abs(u.mean() - 0.5) < 0.01
    with pytest.raises(ValueError, match="unknown time distribution"):
        losses.sample_t(jax.random.key(0), 3, kind="beta")


def test_repa_cosine_and_grid_resize():
    rng = np.random.default_rng(2)
    p = rng.normal(size=(2, 16, 5)).astype(np.float32)
    q = rng.normal(size=(2, 16, 5)).astype(np.float32)
    s, n = losses.repa_sum(jnp.asarray(p), jnp.asarray(q))
    cos = (p * q).sum(-1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(q, axis=-1))
    np.testing.assert_allclose(float(s), -cos.sum(), rtol=1e-5)
    assert float(n) == 32
    # identical directions give −1 per token; the target gets no gradient
    s1, _ = losses.repa_sum(jnp.asarray(p), jnp.asarray(3 * p))
    assert float(s1) == pytest.approx(-32, rel=1e-5)
    g = jax.grad(lambda qq: losses.repa_sum(jnp.asarray(p), qq)[0])(jnp.asarray(q))
    assert float(jnp.abs(g).max()) == 0.0
    # grid resize: same side is the identity; a constant grid stays constant; 4×4 → 2×2 averages
    f = jnp.asarray(rng.normal(size=(1, 16, 3)).astype(np.float32))
    assert losses.resize_tokens(f, 4) is f
    c = losses.resize_tokens(jnp.ones((1, 16, 3)), 2)
    np.testing.assert_allclose(np.asarray(c), 1.0, rtol=1e-6)
    assert c.shape == (1, 4, 3)
    with pytest.raises(ValueError, match="square"):
        losses.resize_tokens(jnp.ones((1, 15, 3)), 2)


def test_drop_condition_keeps_only_bos():
    m = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    out = np.asarray(losses.drop_condition(m, jnp.asarray([True, True, False])))
    np.testing.assert_array_equal(out, [[0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [0, 1, 1, 1, 1]])


def test_ema_is_the_debiased_average_of_the_run_s_weights():
    """After updates 1..t the EMA is sum_k decay^(t-k) p_k / sum_k decay^(t-k): the starting weights do
    not count (a plain EMA from them would keep decay^t of them), the first update's weights are the
    EMA after it, and a long run tends to the plain recursion."""
    from janusflow_jax.training.step import ema_update

    rng = np.random.default_rng(3)
    decay, n = 0.999, 40
    ps = rng.normal(size=(n + 1, 5)).astype(np.float32)  # ps[0]: the weights the run starts from
    ema = {"w": jnp.asarray(ps[0])}
    for t in range(1, n + 1):
        ema = ema_update(ema, {"w": jnp.asarray(ps[t])}, decay, jnp.int32(t))
        w = decay ** (t - np.arange(1, t + 1))
        want = (w[:, None] * ps[1 : t + 1]).sum(0) / w.sum()
        np.testing.assert_allclose(np.asarray(ema["w"]), want, rtol=2e-5, atol=1e-5)
    assert ema_update(ema, {"w": jnp.asarray(ps[1])}, None, 1) is ema  # no decay: no EMA
    big = ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, 0.9, jnp.int32(10_000))  # d_t -> decay
    np.testing.assert_allclose(np.asarray(big["w"]), 0.1, rtol=1e-5)


def test_init_leaves_loaded_parts_out_without_touching_the_rest():
    """`init_params` drops loaded parts (e.g. Janus's trained VQ inside the random `janus` module)
    from its random-init program: `_without` removes exactly those subtrees, from a copy."""
    from janusflow_jax.training.build import _without

    tree = {"janus": {"gen_vision_model": {"w": 1}, "gen_head": {"w": 2}, "vision_model": {"w": 3}}, "vq": {"w": 4}}
    got = _without(tree, [("janus", "gen_vision_model"), ("janus", "absent", "x"), ("absent",)])
    assert got == {"janus": {"gen_head": {"w": 2}, "vision_model": {"w": 3}}, "vq": {"w": 4}}
    assert "gen_vision_model" in tree["janus"]  # the input is left as it was


# --- the training forward on the tiny fixture model ---------------------------------------------


def _cfg(stage="2", *, accum=1, ema=None, lr=1e-3, eps=1e-8, repa_layer=1, scan_layers=True, **extra):
    """A janusflow-task TrainConfig on the tiny fixture architecture (random weights: build(weights=False))."""
    ov = [f"stage={stage}", f"model.config={TINY_DIR / 'config.json'}", f"model.vae_from={TINY_DIR / 'vae'}",
          f"model.scan_layers={str(scan_layers).lower()}", f"loss.repa.layer={repa_layer}", "loss.repa.hidden=32",
          f"optim.lr={lr}", f"optim.eps={eps}", f"optim.grad_accum={accum}",
          f"optim.ema_decay={'null' if ema is None else ema}", "data.mix.gen=4", "data.gen.kind=shapes"]  # fmt: skip
    return load_config(None, ov + [f"{k}={v}" for k, v in extra.items()])


def _build(stage="2", mesh=None, **kw):
    return build(_cfg(stage, **kw), mesh or make_mesh(), weights=False)


@functools.cache
def _tiny():
    """The fixture-size training modules, randomly initialised (once per process: the tests only
    read these arrays; nothing here donates them). What trains is decided by each test's labels."""
    b = _build()
    return b.task.model_cfg, b.task.vae_cfg, b.graphdef, b.init_params()


def _batch(cfg, rng, gen=4, und=2, text=2):
    s, p = cfg.gen_image_size, cfg.siglip.num_patches
    lu = 6 + p + 1 + 4
    seq = np.zeros((und, lu), bool)
    seq[:, 3 : 3 + p + 1] = True
    lm = np.zeros((und, lu), np.float32)
    lm[:, -4:] = 1
    pm = np.ones((gen, 8), np.int32)
    pm[0, :3] = 0  # a left-padded prompt
    return {
        "gen": {
            "prompt_ids": rng.integers(1, 200, (gen, 8)).astype(np.int32),
            "prompt_mask": pm,
            "image": rng.integers(0, 256, (gen, s, s, 3)).astype(np.uint8),
        },
        "und": {
            "ids": rng.integers(1, 200, (und, lu)).astype(np.int32),
            "mask": np.ones((und, lu), np.int32),
            "loss_mask": lm,
            "pixel_values": rng.normal(size=(und, cfg.siglip.image_size, cfg.siglip.image_size, 3)).astype(np.float32),
            "images_seq_mask": seq,
        },
        "text": {
            "ids": rng.integers(1, 200, (text, 12)).astype(np.int32),
            "mask": np.ones((text, 12), np.int32),
            "loss_mask": np.ones((text, 12), np.float32),
        },
    }


def test_training_velocity_equals_sampler_rows(tiny_model):
    """A kept caption gives the sampler's conditional velocity, a dropped one its unconditional row."""
    m = tiny_model
    cfg, vcfg = m.cfg, m.vae_cfg
    b = _build(**{"loss.repa.weight": 0.0})
    obj = b.task.objective()
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 200, (2, 7)).astype(np.int32)
    mask = np.ones((2, 7), np.int32)
    mask[1, :2] = 0
    img = rng.integers(0, 256, (2, cfg.gen_image_size, cfg.gen_image_size, 3)).astype(np.uint8)
    side = cfg.latent_size(vcfg)
    d = {
        "t": jnp.asarray([0.3, 0.3]),
        "z0": jnp.asarray(rng.normal(size=(2, side, side, 4)).astype(np.float32)),
        "eps": None,
        "drop": jnp.asarray([False, True]),
    }
    gd, st = nnx.split(b.abstract, nnx.Param)
    nnx.replace_by_pure_dict(st, {"janusflow": nnx.to_pure_dict(m.params), "vae": nnx.to_pure_dict(m.vae_params)})
    model = nnx.merge(gd, st)
    gen = {"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask), "image": jnp.asarray(img)}
    v, _, _, _ = jf_task.gen_forward(model, gen, d, obj, capture=False)
    x = jf_task.encode_latents(model.vae, jnp.asarray(img), None)
    zt, _ = losses.rf_pair(x, d["z0"], d["t"])
    n = cfg.num_gen_tokens(vcfg)
    cb = image_sampling.cfg_batch(ids, mask, n, pad_id=m.pad_id)
    jf = model.janusflow
    both = jf.velocity(
        jf.language_model.embed(cb.tokens), cb.mask, cb.positions, jnp.concatenate([zt, zt]), jnp.full((4,), 300.0)
    )
    v = np.asarray(v)
    # float32 rounding only (the two calls batch 2 and 4 rows): max |Δ| / max |v| ≤ 1e-5
    assert rel_err(v[0], both[0]) < 1e-5  # conditional row 0
    assert rel_err(v[1], both[3]) < 1e-5  # unconditional row 1
    assert np.abs(np.asarray(both[1]) - np.asarray(both[3])).max() > 1e-4  # dropping matters


def _step(stage, **kw):
    b = _build(stage, **kw)
    return b.labels, b.layout.tx, b.step_fn


def test_repa_gradient_does_not_reach_siglip():
    cfg, vcfg, gd, params = _tiny()
    batch = _batch(cfg, np.random.default_rng(4), und=0, text=0)
    batch = {"gen": batch["gen"]}
    obj = _build().task.objective()
    d = obj.draw(jax.random.key(0), batch)

    jf = params["janusflow"]
    # the gradient with respect to the three modules in question only (not the VAE's and ShallowUViT's:
    # a smaller program to compile, the same REPA path)
    sub = {"siglip": jf["vision_und_enc_model"], "repa": params["repa"], "llm": jf["language_model"]}

    def repa_only(sub):
        jf_sub = {**jf, "vision_und_enc_model": sub["siglip"], "language_model": sub["llm"]}
        p = {**params, "janusflow": jf_sub, "repa": sub["repa"]}
        return obj.loss_sums(nnx.merge(gd, p), batch, d)["repa"]

    g = jax.jit(jax.grad(repa_only))(sub)
    sig = jax.tree.leaves(g["siglip"])
    assert sig and all(float(jnp.abs(x).max()) == 0.0 for x in sig)
    assert float(jnp.abs(g["repa"]["fc1"]["kernel"]).max()) > 0
    llm_q = g["llm"]["model"]["layers"]["self_attn"]["q_proj"]
    assert float(jnp.abs(llm_q).max()) > 0  # REPA trains the LLM below the aligned layer


def test_stage1_freezes_llm_and_siglip_without_optimizer_state():
    cfg, vcfg, gd, params = _tiny()
    labels, tx, step = _step("1", ema=0.9)
    st = S.init_state(params, tx, labels, jax.random.key(0), ema=True)
    before = jax.tree.map(np.asarray, params)
    st2, m = jax.jit(step)(st, _batch(cfg, np.random.default_rng(5)))
    after = st2["params"]
    jf_b, jf_a = before["janusflow"], after["janusflow"]
    for frozen in ("language_model", "vision_und_enc_model"):
        assert leaves_equal(jf_b[frozen], jf_a[frozen]), frozen
    assert leaves_equal(before["vae"], after["vae"])
    for trained in ("vision_gen_enc_model", "vision_gen_dec_model", "vision_und_enc_aligner", "vision_gen_dec_aligner"):
        assert not leaves_equal(jf_b[trained], jf_a[trained]), trained
    assert not leaves_equal(before["repa"], after["repa"])
    # optimizer state: Adam's two moments for the trainable leaves only
    n_train = sum(x.size for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels)) if lab == S.TRAIN)
    n_opt = sum(x.size for x in jax.tree.leaves(st2["opt_state"]) if x.ndim > 0 or x.dtype != jnp.int32)
    assert n_opt == 2 * n_train
    assert set(st2["ema"]) == set(S.ema_keys(labels)) and not any("language_model" in k for k in st2["ema"])
    assert all(np.isfinite(float(v)) for v in m.values())


@functools.cache
def _unrolled_reference_step():
    """The tiny model with its layers unrolled, one stage-3 step on one device (shared by the meshes).

    Layers unrolled (same parameters): XLA:CPU's thunk executor runs a while loop concurrently with
    collectives that do not depend on it, and simulated devices may take them in different orders,
    so with tensor > 1 (collectives inside the layer loop) the step can deadlock and abort on the
    rendezvous timeout (seen ~1 in 3 runs at -O0). Straight-line layers leave one order."""
    cfg, _, _, params = _tiny()
    batch = _batch(cfg, np.random.default_rng(7), gen=8, und=8, text=8)
    # eps=1e-3: Adam's first update is lr·g/(|g|+eps); with eps=1e-8 it is ~lr·sign(g), so float-noise
    # gradients (~1e-9, e.g. unused embedding rows; their reduction order differs across shardings and
    # micro-batches) become ~lr-sized differences. With a larger eps the update stays proportional to
    # the gradient being compared; the gradients themselves are compared through grad_norm.
    kw = dict(ema=0.9, eps=1e-3, scan_layers=False)
    b = _build("3", **kw)
    st = S.init_state(params, b.layout.tx, b.labels, jax.random.key(0), ema=True)
    ref_state, ref_m = jax.jit(b.step_fn)(jax.tree.map(jnp.copy, st), batch)
    return kw, params, batch, st, ref_state, ref_m


def test_gradient_accumulation_matches_one_batch():
    """The shared one-device reference step (one batch of 8 + 8 + 8 rows) against the same step taking
    the batch as 2 micro-batches of accumulated gradients (same parameters, state and draws)."""
    kw, params, batch, st, s1, m1 = _unrolled_reference_step()
    b = _build("3", accum=2, **kw)
    s2, m2 = jax.jit(b.step_fn)(jax.tree.map(jnp.copy, st), batch)
    for k in ("loss", "rf", "repa", "und", "text", "grad_norm"):
        assert float(m2[k]) == pytest.approx(float(m1[k]), rel=1e-5, abs=1e-6), k
    for a, b_ in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
        np.testing.assert_allclose(np.asarray(b_), np.asarray(a), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [{"data": 2, "fsdp": 2, "tensor": 2}])
def test_sharded_step_equals_single_device(shape):
    """(data 2, fsdp 2, tensor 2) equals one device: every JanusFlow module's parameters sharded over
    fsdp and tensor, the batch over data × fsdp. The pure data-parallel and pure FSDP meshes run the
    same generic step in the janus task's sharded test ((data 8), (fsdp 8)); the JanusFlow-only
    modules (ShallowUViT, VAE, REPA head) shard by the same rules table, checked here."""
    kw, params, batch, st, ref_state, ref_m = _unrolled_reference_step()
    mesh = make_mesh(shape)
    b = _build("3", mesh, **kw)
    shardings = b.layout.state_shardings
    q = shardings["params"]["janusflow"]["language_model"]["model"]["layers"]["self_attn"]["q_proj"].spec
    assert tuple(q) == (None, "fsdp", "tensor", None)
    mu = shardings["opt_state"].inner_states["train"].inner_state[1][0].mu
    assert (
        mu["janusflow"]["vision_gen_enc_aligner"]["kernel"]
        == shardings["params"]["janusflow"]["vision_gen_enc_aligner"]["kernel"]
    )
    new_state, m = sharded_step(b, st, batch)
    emb = new_state["params"]["janusflow"]["language_model"]["model"]["embed_tokens"]["embedding"]
    assert (
        emb.sharding.spec
        == shardings["params"]["janusflow"]["language_model"]["model"]["embed_tokens"]["embedding"].spec
    )
    assert_step_matches((ref_state, ref_m), (new_state, m), ("loss", "rf", "repa", "und", "text"))


# --- the vae task: the small-VAE training step ------------------------------------------------------


class _StubVae:
    """encode: mean = first 2 channels ×0.5, logvar = constant; decode: tile back to 3 channels."""

    def encode(self, x):
        return 0.5 * x[..., :2], jnp.full(x.shape[:-1] + (2,), -1.0)

    def decode(self, z):
        return jnp.concatenate([z, z[..., :1]], axis=-1)


class _StubModules:
    vae = _StubVae()


def test_vae_losses_match_numpy():
    from janusflow_jax.training.config import VaeLoss
    from janusflow_jax.training.tasks.vae import VaeObjective

    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, (2, 5, 6, 3)).astype(np.float32)
    x = np.round((x + 1) * 127.5) / 127.5 - 1  # what uint8 images become
    u8 = np.round((x + 1) * 127.5).astype(np.uint8)
    eps = rng.normal(size=(2, 5, 6, 2)).astype(np.float32)
    obj = VaeObjective(VaeLoss(kl_weight=0.1, edge_weight=0.5), (5, 6, 2))
    batch = {"gen": {"image": jnp.asarray(u8)}}
    sums = obj.loss_sums(_StubModules(), batch, {"eps": jnp.asarray(eps)})
    den = obj.counts(batch)
    got = {k: float(v) for k, v in obj.metrics(sums, den).items()}
    got["loss"] = float(obj.total(sums, den))
    x = u8.astype(np.float32) / 127.5 - 1
    mean, logvar = 0.5 * x[..., :2], np.full(x.shape[:-1] + (2,), -1.0)
    z = mean + np.exp(0.5 * logvar) * eps
    rec = np.concatenate([z, z[..., :1]], axis=-1)
    d = rec - x
    l1, l2 = np.abs(d).mean(), (d**2).mean()
    edge = (
        np.abs(np.diff(rec, axis=1) - np.diff(x, axis=1)).mean()
        + np.abs(np.diff(rec, axis=2) - np.diff(x, axis=2)).mean()
    )
    kl = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar).mean()
    want = {"l1": l1, "l2": l2, "edge": edge, "kl": kl, "loss": l1 + l2 + 0.5 * edge + 0.1 * kl}
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5), k


@pytest.mark.slow
def test_vae_step_sharded_equals_single_device(tmp_path):
    """The VAE step (convolutions sharded fsdp/tensor) on {data:2, fsdp:2, tensor:2} equals one device.
    The fixture VAE's architecture cut to two levels of one ResNet block at 16 px: every kind of layer
    (convolutions, GroupNorm, down/upsampling, the mid-block attention) at half the fixture's compile."""
    with open(TINY_DIR / "vae" / "config.json") as f:
        vae_cfg = json.load(f)
    vae_cfg.update(block_out_channels=[16, 32], down_block_types=vae_cfg["down_block_types"][:2],
                   up_block_types=vae_cfg["up_block_types"][:2], layers_per_block=1, sample_size=16)  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(vae_cfg))
    ov = ["task=vae", f"model.vae_config={tmp_path / 'config.json'}", "optim.lr=1e-3", "optim.eps=1e-3",
          "loss.vae.kl_weight=1e-3", "data.mix.gen=8", "data.gen.kind=shapes"]  # fmt: skip
    cfg = load_config(None, ov)
    b1 = build(cfg, make_mesh(), weights=False)
    params = b1.init_params()
    s = b1.task.gen_image_size
    batch = {"gen": {"image": np.random.default_rng(9).integers(0, 256, (8, s, s, 3)).astype(np.uint8)}}
    st = S.init_state(params, b1.layout.tx, b1.labels, jax.random.key(0), ema=False)
    ref_state, ref_m = jax.jit(b1.step_fn)(jax.tree.map(jnp.copy, st), batch)

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    b = build(cfg, mesh, weights=False)
    new_state, m = sharded_step(b, st, batch)
    for k in ("loss", "l1", "l2", "edge", "kl", "grad_norm"):
        assert float(m[k]) == pytest.approx(float(ref_m[k]), rel=2e-5, abs=1e-6), k
    # float32 reduction order differs across shardings: compare each update to its own size
    for a, b, p0 in zip(
        jax.tree.leaves(ref_state["params"]), jax.tree.leaves(new_state["params"]), jax.tree.leaves(params)
    ):
        a, b, p0 = np.asarray(a), np.asarray(b), np.asarray(p0)
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a - p0).max() + 1e-7
