"""The `vq` task (LlamaGen VQ tokenizer training): every loss part, the code histogram, usage and
perplexity against NumPy on a tiny random VQ; the straight-through estimator's gradient routing; and
a short in-process run on the shapes world — its first (8-way data-sharded) step against NumPy (the
histogram is summed over the shards), the reconstruction loss falling, the export `load_vq` reads
back, the reconstruction sample."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from janusflow_jax import checkpoint
from janusflow_jax.sharding import make_mesh
from janusflow_jax.training.build import build
from janusflow_jax.training.config import VqLoss, load_config
from janusflow_jax.training.tasks import vq as vq_task

# 16 px → 8×8 codes of 4 dims from 64 rows; channels 16 / 32 in 8 GroupNorm groups (the official 32
# groups would need ≥ 32 channels: 4× the FLOPs, which the training run below would pay)
TINY_VQ = {"codebook_size": 64, "codebook_embed_dim": 4, "encoder_ch_mult": [1, 2], "decoder_ch_mult": [1, 2],
           "z_channels": 16, "ch": 16, "num_res_blocks": 1, "norm_groups": 8, "image_size": 16}  # fmt: skip
# every loss part weighted (and differently), so `total` is checked term by term
WEIGHTS = VqLoss(l1_weight=0.3, l2_weight=1.0, edge_weight=0.5, codebook_weight=0.7, commit_weight=0.25)
K, D, SIDE, GRID = 64, 4, 16, 8

_encode = jax.jit(lambda vq, x: vq.encode(x))
_decode = jax.jit(lambda vq, zq: vq.decode(zq))


def _images(rng, n=4):
    """uint8 `[n, 16, 16, 3]`: noise, a smooth ramp, two flat colours, noise (varied latents)."""
    x = rng.integers(0, 256, (n, SIDE, SIDE, 3)).astype(np.uint8)
    hh, ww = np.meshgrid(np.linspace(0, 255, SIDE), np.linspace(0, 255, SIDE), indexing="ij")
    x[1] = np.round(np.stack([hh, ww, 255 - hh], -1)).astype(np.uint8)
    x[2, :8], x[2, 8:] = (250, 10, 10), (10, 10, 250)
    return x


def _np_reference(graphdef, params, u8, w: VqLoss):
    """Every part recomputed in NumPy (float64) from the model's own encoder and decoder outputs:
    normalisation, nearest rows, codebook / commitment, reconstruction, edges, histogram, usage,
    perplexity, the weighted total."""
    vq = nnx.merge(graphdef, params).vq
    x = u8.astype(np.float64) / 127.5 - 1.0
    z = np.asarray(_encode(vq, jnp.asarray(x, jnp.float32)), np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    e = np.asarray(params["vq"]["quantize"]["embedding"], np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    dist = ((z[..., None, :] - e) ** 2).sum(-1)  # [B, h, w, K]
    codes = dist.argmin(-1)
    srt = np.sort(dist, axis=-1)
    margin = float((srt[..., 1] - srt[..., 0]).min())
    zq = e[codes]
    rec = np.asarray(_decode(vq, jnp.asarray(zq, jnp.float32)), np.float64)
    d = rec - x
    edge = (np.abs(np.diff(rec, axis=1) - np.diff(x, axis=1)).mean()
            + np.abs(np.diff(rec, axis=2) - np.diff(x, axis=2)).mean())  # fmt: skip
    vq_term = ((zq - z) ** 2).mean()  # codebook and commitment have the same value (different gradients)
    hist = np.bincount(codes.reshape(-1), minlength=K).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    m = {"l1": np.abs(d).mean(), "l2": (d**2).mean(), "edge": edge, "codebook": vq_term, "commit": vq_term,
         "usage": (hist > 0).mean(), "perplexity": np.exp(-(p * np.log(p)).sum())}  # fmt: skip
    m["loss"] = (w.l1_weight * m["l1"] + w.l2_weight * m["l2"] + w.edge_weight * m["edge"]
                 + w.codebook_weight * m["codebook"] + w.commit_weight * m["commit"])  # fmt: skip
    return m, codes, hist, margin


def _cfg(vq_json, *extra):
    return load_config(None, ["task=vq", f"model.vq_config={vq_json}", "data.mix.gen=8", "data.gen.kind=shapes",
                              *extra])  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The task built on one device with WEIGHTS, its random initial params, a batch of 4 images."""
    path = tmp_path_factory.mktemp("vq") / "vq.json"
    path.write_text(json.dumps(TINY_VQ))
    weights = [f"loss.vq.{f.name}={getattr(WEIGHTS, f.name)}" for f in dataclasses.fields(VqLoss)]
    built = build(_cfg(path, *weights), make_mesh(), weights=False)
    return path, built, built.init_params(), {"gen": {"image": _images(np.random.default_rng(0))}}


def test_losses_usage_and_perplexity_match_numpy(tiny):
    _, built, params, batch = tiny
    want, codes, hist, margin = _np_reference(built.graphdef, params, batch["gen"]["image"], WEIGHTS)
    obj = built.task.objective()
    assert obj.loss == WEIGHTS and (obj.grid, obj.embed_dim, obj.codebook_size) == (GRID, D, K)
    # nearest rows unambiguous in float32 (distances ≤ 4, float32 error ~1e-6)
    assert margin > 1e-5, margin

    @jax.jit
    def run(p, b):
        model = nnx.merge(built.graphdef, p)
        sums, den = obj.loss_sums(model, b, {}), obj.counts(b)
        codes = vq_task.forward(model.vq, vq_task.to_unit(b["gen"]["image"]))[3]
        return sums, den, obj.metrics(sums, den), obj.total(sums, den), codes

    sums, den, got, total, got_codes = run(params, batch)
    np.testing.assert_array_equal(np.asarray(got_codes), codes)
    np.testing.assert_array_equal(np.asarray(sums["hist"]), hist)  # counts per row, summing to B·h·w
    assert float(den["l2"]) == 4 * SIDE * SIDE * 3 and float(den["commit"]) == 4 * GRID * GRID * D
    assert float(den["edge_h"]) == float(den["edge_w"]) == 4 * (SIDE - 1) * SIDE * 3
    n_used = int((hist > 0).sum())
    assert 1 < n_used < K, hist  # some rows unused: usage is neither 0 nor 1
    assert float(got["usage"]) == n_used / K
    assert 1.0 < want["perplexity"] < n_used - 1  # a skewed histogram (uniform over the used rows: n_used)
    for k in ("l1", "l2", "edge", "codebook", "commit", "usage", "perplexity"):
        assert float(got[k]) == pytest.approx(want[k], rel=1e-5), k
    assert float(total) == pytest.approx(want["loss"], rel=1e-5)


def _max_abs(tree) -> float:
    leaves = jax.tree.leaves(tree)
    assert leaves
    return max(float(jnp.abs(x).max()) for x in leaves)


def test_straight_through_gradients(tiny):
    """Reconstruction trains encoder and decoder (the decoder reads z + sg(z_q − z)) but never the
    codebook; the codebook term trains the codebook only (the rows chosen); the commitment term the
    encoder only."""
    _, built, params, batch = tiny
    obj = built.task.objective()

    def parts(p):
        sums = obj.loss_sums(nnx.merge(built.graphdef, p), batch, {})
        return jnp.stack([sums[k] for k in ("l2", "codebook", "commit")])

    jac = jax.jit(jax.jacrev(parts))(params)  # one backward pass, vmapped over the three parts
    g_rec, g_cb, g_commit = (jax.tree.map(lambda x: x[i], jac) for i in range(3))

    def enc(g):
        return {k: g["vq"][k] for k in ("encoder", "quant_conv")}

    def dec(g):
        return {k: g["vq"][k] for k in ("decoder", "post_quant_conv")}

    def emb(g):
        return g["vq"]["quantize"]["embedding"]

    assert _max_abs(enc(g_rec)) > 1e-6 and _max_abs(dec(g_rec)) > 1e-6
    assert _max_abs(emb(g_rec)) == 0.0
    assert _max_abs(emb(g_cb)) > 1e-6
    assert _max_abs(enc(g_cb)) == 0.0 and _max_abs(dec(g_cb)) == 0.0
    assert _max_abs(enc(g_commit)) > 1e-6
    assert _max_abs(emb(g_commit)) == 0.0 and _max_abs(dec(g_commit)) == 0.0
    _, _, hist, _ = _np_reference(built.graphdef, params, batch["gen"]["image"], WEIGHTS)
    np.testing.assert_array_equal(np.asarray(jnp.abs(emb(g_cb)).max(-1)) > 0, hist > 0)


def test_tiny_run_first_step_matches_numpy_and_exports(tiny, tmp_path):
    """6 steps of the task's defaults (l2 + codebook + 0.25 commit) on the shapes world, no processor,
    8 simulated devices ({data: 8}: one image per shard). (That the loss falls over a longer run is
    checked on the GenEval VQ preset in test_geneval_train.py.)"""
    from janusflow_jax.training.trainer import Trainer

    vq_json, built, init_params, _ = tiny
    out, steps = tmp_path / "run", 6
    cfg = _cfg(vq_json, f"run.out_dir={out}", f"data.data_dir={tmp_path / 'tfds'}", f"run.steps={steps}",
               "run.log_every=1", f"run.save_every={steps}", "run.async_save=false", "optim.lr=2e-3")  # fmt: skip
    assert cfg.model.processor is None and cfg.optim.ema_decay is None and cfg.loss.vq == VqLoss()
    tr = Trainer(cfg, log=lambda m: None)
    try:
        assert tr.task.processor is None and tr.task.gen_image_size == SIDE and dict(tr.mesh.shape)["data"] == 8
        last = tr.run()
        final = jax.device_get(tr.state["params"])
        first_batch = tr.probe_images(1)  # the stream's first batch (what step 1 trained on)
    finally:
        tr.close()
    with open(out / "metrics.jsonl") as f:
        hist = [json.loads(line) for line in f]
    assert [h["step"] for h in hist] == list(range(1, steps + 1)) and last["step"] == steps

    # step 1 (initial params: init_seed 0, as the fixture's) against NumPy on its whole batch: the
    # usage of the 8 shards' summed histogram, not of one shard's rows nor a mean over shards
    assert first_batch.shape == (8, SIDE, SIDE, 3)
    want, codes, _, _ = _np_reference(built.graphdef, init_params, first_batch, VqLoss())
    per_image = [len(np.unique(c)) / K for c in codes]
    assert want["usage"] > max(per_image) and want["usage"] != pytest.approx(np.mean(per_image), rel=1e-3)
    for k in ("usage", "perplexity", "loss", "l2", "codebook", "commit"):
        assert hist[0][k] == pytest.approx(want[k], rel=1e-5), k

    # usage is a count of rows over K in (0, 1]
    for h in hist:
        assert 0.0 < h["usage"] <= 1.0 and 1.0 <= h["perplexity"] <= K, h
        assert h["usage"] * K == pytest.approx(round(h["usage"] * K), abs=1e-4)

    # the export: kind "vq", the architecture it trained, the final params (no EMA)
    export = str(out / "export")
    meta = checkpoint.read_metadata(export)
    assert meta["kind"] == "vq" and meta["trained_steps"] == steps and meta["ema"] is False
    assert meta["vq_config"]["image_size"] == SIDE
    vq_cfg, loaded = vq_task.load_vq(export)
    assert vq_cfg == tr.task.vq_cfg and vq_cfg.codebook_size == K and vq_cfg.norm_groups == 8
    ours = jax.tree_util.tree_flatten_with_path(final["vq"])[0]
    theirs = dict(jax.tree_util.tree_flatten_with_path(jax.device_get(loaded))[0])
    assert len(ours) == len(theirs) > 0
    for path, x in ours:
        np.testing.assert_array_equal(np.asarray(theirs[path]), x, err_msg=jax.tree_util.keystr(path))
    assert not np.array_equal(final["vq"]["quantize"]["embedding"], init_params["vq"]["quantize"]["embedding"])

    # the sample: inputs (the first batch) over the final model's reconstructions
    png = np.asarray(Image.open(out / "samples" / f"recon_{steps:07d}.png").convert("RGB"))
    assert png.shape == (2 * SIDE, 8 * SIDE, 3)
    tiles = png.reshape(2, SIDE, 8, SIDE, 3).transpose(0, 2, 1, 3, 4)
    np.testing.assert_array_equal(tiles[0], first_batch)
    vq = nnx.merge(built.graphdef, final).vq
    x = jnp.asarray(first_batch.astype(np.float32) / 127.5 - 1.0)
    zq = vq.lookup(vq.quantize_codes(_encode(vq, x)))
    rec = np.asarray(jnp.clip(jnp.round((_decode(vq, zq) + 1.0) * 127.5), 0, 255)).astype(np.int32)
    assert np.abs(rec - tiles[1]).max() <= 1  # the decoder input z + (z_q − z) rounds like z_q
