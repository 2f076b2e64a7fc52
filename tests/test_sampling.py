"""Sampler invariants: cached prefix = full recompute, scan ODE = Python loop, determinism,
left-padded batches = rows alone, Heun beats Euler at equal evaluations on a smooth field."""

import jax
import pytest
import jax.numpy as jnp
import numpy as np

from conftest import nchw_to_nhwc, rel_err
from janusflow_jax.sampling.image import cfg_batch, ode_solve, prefill_prompt, time_grid, velocity_fn


def test_cached_prefix_equals_recompute_at_every_step(tiny_model, npz):
    d = npz("sampling")
    m = tiny_model.module
    ids = np.repeat(d["prompt_ids"][None], 2, 0)
    batch = cfg_batch(ids, np.ones_like(ids), 16, pad_id=tiny_model.pad_id)
    cache = prefill_prompt(m, batch)
    v_cached = velocity_fn(m, batch, cache, 2.0)
    v_full = velocity_fn(m, batch, None, 2.0)
    z = jnp.asarray(nchw_to_nhwc(d["z0"]))
    t_grid, dt = time_grid(3)
    for t in t_grid:
        a, b = v_cached(z, t), v_full(z, t)
        assert rel_err(a, b) < 1e-5
        z = z + dt * b
    a = tiny_model.sample_latents(d["prompt_ids"], nchw_to_nhwc(d["z0"]), num_steps=3, cfg_weight=2.0, use_cache=True)
    b = tiny_model.sample_latents(d["prompt_ids"], nchw_to_nhwc(d["z0"]), num_steps=3, cfg_weight=2.0, use_cache=False)
    assert rel_err(a, b) < 1e-5
    assert rel_err(a, z) < 1e-5  # the scanned ODE equals this Python loop


def test_same_inputs_same_latents(tiny_model, npz):
    d = npz("sampling")
    z0 = nchw_to_nhwc(d["z0"])
    a = tiny_model.sample_latents(d["prompt_ids"], z0, num_steps=4, cfg_weight=3.0)
    b = tiny_model.sample_latents(d["prompt_ids"], z0, num_steps=4, cfg_weight=3.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_left_padded_prompts_equal_rows_alone(tiny_model, npz):
    d = npz("sampling")
    long = d["prompt_ids"]
    short = np.concatenate([long[:1], long[10:]])  # BOS + a shorter text + the image tag
    z0 = nchw_to_nhwc(d["z0"])
    pad = tiny_model.pad_id
    ids = np.stack([long, np.concatenate([np.full(10 - 1, pad), short])])
    mask = np.stack([np.ones_like(long), np.concatenate([np.zeros(9, int), np.ones_like(short)])])
    both = tiny_model.sample_latents(ids, z0, num_steps=3, cfg_weight=2.0, prompt_mask=mask)
    a = tiny_model.sample_latents(long, z0[:1], num_steps=3, cfg_weight=2.0)
    b = tiny_model.sample_latents(short, z0[1:], num_steps=3, cfg_weight=2.0)
    assert rel_err(both[:1], a) < 1e-5
    assert rel_err(both[1:], b) < 1e-5
    assert rel_err(a, b) > 1e-3  # the prompts really differ


def test_heun_beats_euler_at_equal_evaluations():
    """dz/dt = −(1 + t)·z, exact z(1) = z0·exp(−1.5): Heun with N steps (2N evaluations) is closer than
    Euler with 2N steps, and its error falls as h² (Euler's as h)."""

    def v(z, t1000):
        return -(1.0 + t1000 / 1000.0) * z

    z0 = jnp.linspace(-2.0, 2.0, 8)
    exact = z0 * np.exp(-1.5)
    errs = {}
    for n in (3, 10, 30):
        tg_e, dt_e = time_grid(2 * n)
        tg_h, dt_h = time_grid(n)
        err_e = float(jnp.abs(ode_solve(v, z0, tg_e, dt_e, "euler") - exact).max())
        err_h = float(jnp.abs(ode_solve(v, z0, tg_h, dt_h, "heun") - exact).max())
        assert err_h < err_e, (n, err_h, err_e)
        errs[n] = (err_e, err_h)
    assert errs[10][1] / errs[30][1] > 7  # measured 9.7 (second order: 9)
    assert errs[10][0] / errs[30][0] < 4  # measured 3.0 (first order: 3)


def test_heun_runs_on_the_model(tiny_model, npz):
    d = npz("sampling")
    z0 = nchw_to_nhwc(d["z0"])
    h = tiny_model.sample_latents(d["prompt_ids"], z0, num_steps=3, cfg_weight=2.0, solver="heun")
    e = tiny_model.sample_latents(d["prompt_ids"], z0, num_steps=3, cfg_weight=2.0)
    assert np.isfinite(np.asarray(h)).all() and rel_err(h, e) > 1e-4


def test_time_grid_matches_the_official_rounding(npz):
    t, dt = time_grid(3)
    np.testing.assert_array_equal(t, npz("sampling")["t"])
    np.testing.assert_array_equal(dt, npz("sampling")["dt"][0])
    t, dt = time_grid(3, "bfloat16")
    np.testing.assert_array_equal(t, npz("sampling_bf16")["t"])
    np.testing.assert_array_equal(dt, npz("sampling_bf16")["dt"][0])
    assert jax.numpy.asarray(t).dtype == jnp.float32


def test_generate_images_api(tiny_model):
    a = tiny_model.generate_images(["a red cube", "a blue floor under a red cube"], num_steps=2, seed=3)
    assert a.shape == (2, 64, 64, 3) and a.dtype == np.uint8
    b = tiny_model.generate_images(["a red cube", "a blue floor under a red cube"], num_steps=2, seed=3, batch_size=1)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # uint8 truncation of float noise only
    c = tiny_model.generate_images(["a red cube"], num_steps=2, seed=4)
    assert np.abs(a[0].astype(int) - c[0].astype(int)).max() > 10  # another seed, another image
    neg = tiny_model.generate_images(["a red cube"], num_steps=2, seed=3, negative_prompt="blurry")
    assert np.abs(a[0].astype(int) - neg[0].astype(int)).max() > 10
    with pytest.raises(ValueError, match="exceeds the context"):
        tiny_model.generate_images(["word " * 1100], num_steps=1)


def test_answer_api_matches_official_greedy_tokens(tiny_model, npz):
    d = npz("understanding")
    import json

    from conftest import TINY_DIR

    questions = json.loads((TINY_DIR / "manifest.json").read_text())["spec"]["und_questions"]
    answers = tiny_model.answer([d["image_0"], d["image_1"]], questions, max_new_tokens=8)
    assert answers == [tiny_model.processor.decode(r) for r in d["generated_ids"]]
