"""The `vq` task (LlamaGen VQ tokenizer training): every loss part, the codebook histogram, usage and
perplexity against NumPy on a tiny random VQ; the straight-through estimator's gradient routing; the
histogram summed over data shards; and a short in-process run on the shapes world whose
reconstruction loss falls and whose export `load_vq` reads back."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from janusflow_jax import checkpoint
from janusflow_jax.sharding import make_mesh, use_mesh
from janusflow_jax.training import state as S
from janusflow_jax.training.build import build
from janusflow_jax.training.config import load_config
from janusflow_jax.training.tasks import vq as vq_task

# 16 px → 8×8 codes of 4 dims from 64 rows; channels 16 / 32 (8 GroupNorm groups: a quarter of the
# FLOPs of the official 32 groups' smallest width, which keeps the training run short)
TINY_VQ = {"codebook_size": 64, "codebook_embed_dim": 4, "encoder_ch_mult": [1, 2], "decoder_ch_mult": [1, 2],
           "z_channels": 16, "ch": 16, "num_res_blocks": 1, "norm_groups": 8, "image_size": 16}  # fmt: skip
# every loss part weighted (and differently), so `total` is checked term by term
WEIGHTS = {"l1_weight": 0.3, "l2_weight": 1.0, "edge_weight": 0.5, "codebook_weight": 0.7, "commit_weight": 0.25}
K, D, SIDE, GRID = 64, 4, 16, 8


def _cfg(vq_json, *extra):
    ov = ["task=vq", f"model.vq_config={vq_json}", "optim.lr=1e-3", "optim.eps=1e-3", "data.mix.gen=4",
          "data.gen.kind=shapes"] + [f"loss.vq.{k}={v}" for k, v in WEIGHTS.items()]  # fmt: skip
    return load_config(None, ov + list(extra))


def _images(rng, n=4):
    """uint8 `[n, 16, 16, 3]`: noise, a smooth ramp and flat colours (varied latents → several codes)."""
    x = rng.integers(0, 256, (n, SIDE, SIDE, 3)).astype(np.uint8)
    hh, ww = np.meshgrid(np.linspace(0, 255, SIDE), np.linspace(0, 255, SIDE), indexing="ij")
    x[1] = np.round(np.stack([hh, ww, 255 - hh], -1)).astype(np.uint8)
    x[2, :8], x[2, 8:] = (250, 10, 10), (10, 10, 250)
    return x


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("vq") / "vq.json"
    path.write_text(json.dumps(TINY_VQ))
    cfg = _cfg(path)
    built = build(cfg, make_mesh(), weights=False)
    params = built.init_params()
    batch = {"gen": {"image": _images(np.random.default_rng(0))}}
    return cfg, built, params, batch


def _np_reference(built, params, u8):
    """Every part recomputed in NumPy (float64) from the model's own encoder and decoder outputs."""
    vq = nnx.merge(built.graphdef, params).vq
    x = u8.astype(np.float64) / 127.5 - 1.0
    z = np.asarray(jax.jit(lambda v, x: v.encode(x))(vq, jnp.asarray(x, jnp.float32)), np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    e = np.asarray(params["vq"]["quantize"]["embedding"], np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    dist = ((z[..., None, :] - e) ** 2).sum(-1)  # [B, h, w, K]
    codes = dist.argmin(-1)
    srt = np.sort(dist, axis=-1)
    margin = float((srt[..., 1] - srt[..., 0]).min())  # float32 search must not flip a near tie
    zq = e[codes]
    rec = np.asarray(jax.jit(lambda v, q: v.decode(q))(vq, jnp.asarray(zq, jnp.float32)), np.float64)
    d = rec - x
    edge = (np.abs(np.diff(rec, axis=1) - np.diff(x, axis=1)).mean()
            + np.abs(np.diff(rec, axis=2) - np.diff(x, axis=2)).mean())  # fmt: skip
    vq_term = ((zq - z) ** 2).mean()  # codebook and commitment have the same value (different gradients)
    hist = np.bincount(codes.reshape(-1), minlength=K).astype(np.float64)
    p = hist / hist.sum()
    nz = p[p > 0]
    m = {"l1": np.abs(d).mean(), "l2": (d**2).mean(), "edge": edge, "codebook": vq_term, "commit": vq_term,
         "usage": (hist > 0).mean(), "perplexity": np.exp(-(nz * np.log(nz)).sum())}  # fmt: skip
    w = WEIGHTS
    m["loss"] = (w["l1_weight"] * m["l1"] + w["l2_weight"] * m["l2"] + w["edge_weight"] * m["edge"]
                 + w["codebook_weight"] * m["codebook"] + w["commit_weight"] * m["commit"])  # fmt: skip
    return m, codes, hist, margin


@pytest.fixture(scope="module")
def reference(tiny):
    cfg, built, params, batch = tiny
    return _np_reference(built, params, batch["gen"]["image"])


def test_losses_usage_and_perplexity_match_numpy(tiny, reference):
    cfg, built, params, batch = tiny
    want, codes, hist, margin = reference
    obj = built.task.objective()
    assert (obj.grid, obj.embed_dim, obj.codebook_size) == (GRID, D, K)
    assert margin > 1e-4, margin  # the codes are unambiguous in float32

    @jax.jit
    def run(p, b):
        sums = obj.loss_sums(nnx.merge(built.graphdef, p), b, {})
        den = obj.counts(b)
        codes = vq_task.forward(nnx.merge(built.graphdef, p).vq, vq_task.to_unit(b["gen"]["image"]))[3]
        return sums, den, obj.metrics(sums, den), obj.total(sums, den), codes

    sums, den, got, total, got_codes = run(params, batch)
    np.testing.assert_array_equal(np.asarray(got_codes), codes)
    np.testing.assert_array_equal(np.asarray(sums["hist"]), hist)
    assert float(den["l2"]) == 4 * SIDE * SIDE * 3 and float(den["commit"]) == 4 * GRID * GRID * D
    assert float(den["edge_h"]) == 4 * (SIDE - 1) * SIDE * 3
    # non-trivial histogram: several codes but not all of them, and not uniform
    n_used = int((hist > 0).sum())
    assert 1 < n_used < K, hist
    assert float(got["usage"]) == n_used / K
    for k in ("l1", "l2", "edge", "codebook", "commit", "usage", "perplexity"):
        assert float(got[k]) == pytest.approx(want[k], rel=1e-5), k
    assert 1.0 < want["perplexity"] < n_used  # a skewed histogram
    assert float(total) == pytest.approx(want["loss"], rel=1e-5)


def _max_abs(tree) -> float:
    leaves = jax.tree.leaves(tree)
    assert leaves
    return max(float(jnp.abs(x).max()) for x in leaves)


def test_straight_through_gradients(tiny):
    """Reconstruction trains encoder and decoder (through the straight-through input) but never the
    codebook; the codebook term trains the codebook only; the commitment term the encoder only."""
    cfg, built, params, batch = tiny
    obj = built.task.objective()

    def parts(p):
        sums = obj.loss_sums(nnx.merge(built.graphdef, p), batch, {})
        return jnp.stack([sums[k] for k in ("l2", "codebook", "commit")])

    jac = jax.jit(jax.jacrev(parts))(params)  # one backward pass, vmapped over the three parts
    g_rec, g_cb, g_commit = (jax.tree.map(lambda x: x[i], jac) for i in range(3))
    enc = lambda g: {k: g["vq"][k] for k in ("encoder", "quant_conv")}  # noqa: E731
    dec = lambda g: {k: g["vq"][k] for k in ("decoder", "post_quant_conv")}  # noqa: E731
    emb = lambda g: g["vq"]["quantize"]["embedding"]  # noqa: E731
    assert _max_abs(enc(g_rec)) > 1e-6 and _max_abs(dec(g_rec)) > 1e-6  # straight-through reaches the encoder
    assert _max_abs(emb(g_rec)) == 0.0
    assert _max_abs(emb(g_cb)) > 1e-6
    assert _max_abs(enc(g_cb)) == 0.0 and _max_abs(dec(g_cb)) == 0.0
    assert _max_abs(enc(g_commit)) > 1e-6
    assert _max_abs(emb(g_commit)) == 0.0 and _max_abs(dec(g_commit)) == 0.0
    # only the rows that were chosen move
    used = np.asarray(jnp.abs(emb(g_cb)).max(-1)) > 0
    want, codes, hist, _ = _np_reference(built, params, batch["gen"]["image"])
    np.testing.assert_array_equal(used, hist > 0)


def test_sharded_step_sums_the_histogram_over_shards(tiny, reference):
    """The jitted step on a {data: 2} mesh (each shard sees 2 of the 4 images) reports the usage /
    perplexity / losses of the whole batch (NumPy's, which the single-device objective matches in the
    test above): the histogram is summed over the shards, not kept per shard."""
    cfg, built, params, batch = tiny
    want, codes, hist, _ = reference
    # the two halves use different code sets, so a per-shard histogram would give other numbers
    halves = [set(np.unique(codes[:2])), set(np.unique(codes[2:]))]
    assert halves[0] != halves[1] and len(halves[0] | halves[1]) > max(map(len, halves)), halves

    st = S.init_state(params, built.layout.tx, built.labels, jax.random.key(0), ema=False)
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
    b2 = build(cfg, mesh, weights=False)
    mine = jax.tree.map(jnp.copy, st)  # the step donates its state
    with use_mesh(mesh):
        f = b2.jit(batch)
        _, m2 = f(jax.device_put(mine, b2.layout.state_shardings), b2.global_batch(batch))
    for k in ("usage", "perplexity", "loss", "l1", "l2", "edge", "codebook", "commit"):
        assert float(m2[k]) == pytest.approx(want[k], rel=1e-5), k


def test_tiny_run_reconstruction_falls_and_exports(tmp_path):
    vq_json = tmp_path / "vq.json"
    vq_json.write_text(json.dumps(TINY_VQ))
    out = tmp_path / "run"
    steps = 30
    cfg = load_config(None, [
        "task=vq", f"model.vq_config={vq_json}", f"run.out_dir={out}", f"data.data_dir={tmp_path / 'tfds'}",
        "data.mix.gen=8", "data.gen.kind=shapes", f"run.steps={steps}", "run.log_every=1",
        f"run.save_every={steps}", "run.async_save=false", "optim.lr=2e-3",
    ])  # fmt: skip
    assert cfg.model.processor is None and cfg.optim.ema_decay is None
    from janusflow_jax.training.trainer import Trainer

    tr = Trainer(cfg, log=lambda m: None)
    try:
        assert tr.task.processor is None and tr.task.gen_image_size == 16
        last = tr.run()
        final = tr.state["params"]
    finally:
        tr.close()
    with open(out / "metrics.jsonl") as f:
        hist = [json.loads(line) for line in f]
    assert [h["step"] for h in hist] == list(range(1, steps + 1))
    first, end = np.mean([h["l2"] for h in hist[:10]]), np.mean([h["l2"] for h in hist[-10:]])
    print(f"l2 first-10 {first:.4f} last-10 {end:.4f}; usage {[round(h['usage'], 3) for h in hist[::8]]}")
    assert end < 0.5 * first, (first, end)
    for h in hist:
        assert 0.0 < h["usage"] <= 1.0 and 1.0 <= h["perplexity"] <= K, h
        assert h["usage"] * K == pytest.approx(round(h["usage"] * K), abs=1e-6)  # a count of rows / K
    assert last["step"] == steps
    # the export: kind "vq", the config it was trained with, the final params (no EMA)
    export = out / "export"
    meta = checkpoint.read_metadata(str(export))
    assert meta["kind"] == "vq" and meta["trained_steps"] == steps and meta["ema"] is False
    assert meta["vq_config"]["image_size"] == 16 and meta["vq_config"]["codebook_size"] == K
    vq_cfg, loaded = vq_task.load_vq(str(export))
    assert vq_cfg == tr.task.vq_cfg
    ours = jax.tree_util.tree_flatten_with_path(final["vq"])[0]
    theirs = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
    assert len(ours) == len(theirs)
    for path, x in ours:
        np.testing.assert_array_equal(np.asarray(theirs[path]), np.asarray(x), err_msg=jax.tree_util.keystr(path))
    pngs = list((out / "samples").glob(f"recon_{steps:07d}.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 0
