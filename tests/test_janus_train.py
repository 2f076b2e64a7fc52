"""The janus training task: the image-code loss against NumPy, the training sequence against the
(parity-tested) sampler — teacher-forced logits, the unconditional row of a dropped prompt, the VQ
codes —, stage freezing of the Janus-Pro presets, and sharded steps equal to one device."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import JANUS_DIR, rel_err
from flax import nnx
from train_harness import assert_step_matches, leaves_equal, sharded_step

from janusflow_jax.janus.generation import cfg_rows
from janusflow_jax.sharding import make_mesh
from janusflow_jax.training import state as S
from janusflow_jax.training.build import build
from janusflow_jax.training.config import load_config
from janusflow_jax.training.tasks import janus as J

PRESETS = pathlib.Path(__file__).resolve().parents[1] / "train" / "configs" / "janus-pro"
TINY = ["model.init_from=null", f"model.config={JANUS_DIR / 'config.json'}", f"model.processor={JANUS_DIR}",
        "model.dtype=float32", "model.remat=none", "mesh.fsdp=1", "mesh.data=-1", "data.gen.kind=shapes",
        "data.und.kind=shapes", "data.text.kind=text", "data.mix.gen=4", "data.mix.und=2",
        "data.mix.text=2"]  # fmt: skip


def _cfg(stage="2", *extra, eps=1e-3, scan_layers=True):
    # eps=1e-3: Adam's first update is lr·g/(|g|+eps); with 1e-8 float-noise gradients become ±lr steps
    ov = TINY + [f"optim.eps={eps}", f"model.scan_layers={str(scan_layers).lower()}", *extra]
    return load_config(str(PRESETS / f"stage{stage}.yaml"), ov)


def _build(stage="2", mesh=None, *extra, **kw):
    return build(_cfg(stage, *extra, **kw), mesh or make_mesh(), weights=False)


def test_image_code_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
    codes = rng.integers(0, 7, (2, 5)).astype(np.int32)
    x = logits - logits.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, codes[..., None], -1).sum()
    assert float(J.code_ce_sum(jnp.asarray(logits), jnp.asarray(codes))) == pytest.approx(want, rel=1e-6)


def _prompts(model, rng, b=3, length=9):
    ids = rng.integers(5, 120, (b, length)).astype(np.int32)
    mask = np.ones((b, length), np.int32)
    mask[1, :3] = 0  # a left-padded row
    ids[:, -1] = model.processor.image_start_id
    ids[np.arange(b), np.argmax(mask, 1)] = model.bos_id
    return ids, mask


def test_prompt_dropout_is_the_samplers_unconditional_row(janus_model):
    obj = _build().task.objective()
    assert obj.pad_id == janus_model.pad_id
    ids, mask = _prompts(janus_model, np.random.default_rng(1))
    drop = jnp.asarray([True, True, False])
    got = np.asarray(obj.gen_prompt({"prompt_ids": jnp.asarray(ids), "prompt_mask": jnp.asarray(mask)}, drop))
    tokens, rows_mask, _ = cfg_rows(ids, mask, janus_model.pad_id)
    np.testing.assert_array_equal(got[:2], np.asarray(tokens)[3:5])  # the sampler's unconditional rows
    np.testing.assert_array_equal(got[2], ids[2])  # a kept prompt is untouched
    np.testing.assert_array_equal(np.asarray(rows_mask)[3:], mask)  # and the mask is the prompt's
    assert (got[0] != ids[0]).sum() == ids.shape[1] - 2  # all but BOS and <begin_of_image> replaced


def test_codes_come_from_the_vq_encoder_and_logits_from_the_sampler(janus_model):
    """The step's codes are `vq_encode`'s; its teacher-forced logits are the sampler's conditional ones."""
    m = janus_model
    rng = np.random.default_rng(2)
    s = m.cfg.gen_image_size
    img = rng.integers(0, 256, (3, s, s, 3)).astype(np.uint8)
    module = nnx.merge(m.graphdef, m.params)
    codes = np.asarray(jax.jit(J.image_codes)(module, jnp.asarray(img)))
    want = np.asarray(m.vq_encode(img.astype(np.float32) / 127.5 - 1.0)).reshape(3, -1)
    np.testing.assert_array_equal(codes, want)
    ids, mask = _prompts(m, rng)
    got = np.asarray(jax.jit(J.code_logits)(module, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(codes)))
    ref = np.asarray(m.image_token_logits(ids, codes, cfg_weight=1.0, prompt_mask=mask))  # u + 1·(c − u) = c
    assert got.shape == ref.shape == (3, codes.shape[1], m.cfg.image_token_size)
    assert rel_err(got, ref) < 1e-5


@pytest.mark.parametrize(
    "stage, trains",
    [("1", set(J.ADAPTORS)), ("2", set(J.ADAPTORS + J.LLM)), ("3", set(J.ADAPTORS + J.LLM + J.SIGLIP))],
)
def test_preset_stages_train_what_the_report_says(stage, trains):
    b = _build(stage)
    c = b.cfg
    lr, warm = {"1": (1e-3, 600), "2": (1e-4, 5000), "3": (4e-5, 0)}[stage]
    assert (c.optim.lr, c.optim.warmup_steps, c.optim.b1, c.optim.b2, c.optim.weight_decay, c.optim.clip_norm) == (
        lr, warm, 0.9, 0.95, 0.0, 1.0)  # fmt: skip
    flat = jax.tree_util.tree_flatten_with_path(b.labels)[0]
    trained = {str(p[1].key) for p, lab in flat if lab == S.TRAIN}
    assert trained == trains and "gen_vision_model" not in trained
    opt = jax.tree.leaves(b.layout.abstract_state["opt_state"])
    assert sum(x.size for x in opt if x.ndim > 0) == 2 * b.layout.n_train  # Adam moments of trained leaves only


def _batch(cfg, rng, gen=4, und=2, text=2):
    s, p, su = cfg.gen_image_size, cfg.siglip.num_patches, cfg.siglip.image_size
    lu = 6 + p + 2 + 4
    seq = np.zeros((und, lu), bool)
    seq[:, 4 : 4 + p] = True
    lm = np.zeros((und, lu), np.float32)
    lm[:, -4:] = 1
    pm = np.ones((gen, 8), np.int32)
    pm[0, :3] = 0
    return {
        "gen": {"prompt_ids": rng.integers(1, 120, (gen, 8)).astype(np.int32), "prompt_mask": pm,
                "image": rng.integers(0, 256, (gen, s, s, 3)).astype(np.uint8)},
        "und": {"ids": rng.integers(1, 120, (und, lu)).astype(np.int32), "mask": np.ones((und, lu), np.int32),
                "loss_mask": lm, "pixel_values": rng.normal(size=(und, su, su, 3)).astype(np.float32),
                "images_seq_mask": seq},
        "text": {"ids": rng.integers(1, 120, (text, 12)).astype(np.int32), "mask": np.ones((text, 12), np.int32),
                 "loss_mask": np.ones((text, 12), np.float32)},
    }  # fmt: skip


@functools.cache
def _params():
    return _build("1").init_params()


def test_stage1_step_leaves_the_frozen_modules_bit_identical():
    b = _build("1", None, "optim.ema_decay=0.9", "optim.warmup_steps=0")  # the preset warms up from lr 0
    params = _params()
    st = S.init_state(params, b.layout.tx, b.labels, jax.random.key(0), ema=True)
    before = jax.tree.map(np.asarray, params)["janus"]
    new, m = jax.jit(b.step_fn)(jax.tree.map(jnp.copy, st), _batch(b.task.model_cfg, np.random.default_rng(3)))
    after = new["params"]["janus"]
    for frozen in ("language_model", "vision_model", "gen_vision_model"):
        assert leaves_equal(before[frozen], after[frozen]), frozen
    for trained in J.ADAPTORS:
        assert not leaves_equal(before[trained], after[trained]), trained
    assert set(new["ema"]) == set(S.ema_keys(b.labels)) and not any("language_model" in k for k in new["ema"])
    assert {"gen", "und", "text"} <= set(m) and all(np.isfinite(float(v)) for v in m.values())
    assert float(m["gen"]) == pytest.approx(np.log(b.task.model_cfg.image_token_size), rel=0.5)


@functools.cache
def _reference_step():
    """One stage-3 step on one device, layers unrolled (see test_train_core: no while loop beside
    collectives on simulated devices)."""
    b = _build("3", None, scan_layers=False)
    batch = _batch(b.task.model_cfg, np.random.default_rng(4), gen=8, und=8, text=8)
    st = S.init_state(_params(), b.layout.tx, b.labels, jax.random.key(0), ema=False)
    return batch, st, jax.jit(b.step_fn)(jax.tree.map(jnp.copy, st), batch)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [{"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 8}])
def test_sharded_janus_step_equals_single_device(shape):
    batch, st, ref = _reference_step()
    b = _build("3", make_mesh(shape), scan_layers=False)
    got = sharded_step(b, st, batch)
    new_state = assert_step_matches(ref, got, ("loss", "gen", "und", "text", "grad_norm"))
    head = new_state["params"]["janus"]["gen_head"]["vision_head"]["kernel"]
    assert head.sharding.spec == b.layout.state_shardings["params"]["janus"]["gen_head"]["vision_head"]["kernel"].spec
