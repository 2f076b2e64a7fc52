"""Blocked causal attention (and the two-block prefix form) equals one plain masked softmax over
the concatenated keys, including left-pad rows that see no key at all."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_err
from janusflow_jax.nn.llama import attention, causal_attention


def _inputs(b=2, t=37, p=11, n=4, k=2, h=8, seed=0):
    r = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    key_mask = np.ones((b, t), bool)
    key_mask[0, :5] = False  # left padding: rows 0..4 of batch 0 see no key
    pmask = np.ones((b, p), bool)
    pmask[1, :3] = False
    return (
        f(b, t, n, h),
        f(b, t, k, h),
        f(b, t, k, h),
        jnp.asarray(key_mask),
        f(b, p, k, h),
        f(b, p, k, h),
        jnp.asarray(pmask),
    )


@pytest.mark.parametrize("block", [0, 7, 16])
def test_blocked_equals_plain(block):
    q, k, v, km, *_ = _inputs()
    t = q.shape[1]
    mask = (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])[None] & km[:, None, :]
    ref = attention(q, k, v, mask, 0.3)
    got = causal_attention(q, k, v, km, 0.3, block)
    assert rel_err(got, ref) < 1e-6
    assert rel_err(got[0, :5], jnp.broadcast_to(jnp.repeat(v[0].mean(0), 2, axis=0), (5, 4, 8))) < 1e-6  # uniform rows


@pytest.mark.parametrize("block", [0, 5, 16])
def test_prefix_form_equals_concatenation(block):
    q, k, v, km, pk, pv, pm = _inputs(seed=1)
    km = jnp.ones_like(km)
    t, p = q.shape[1], pk.shape[1]
    causal = (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])[None] & km[:, None, :]
    mask = jnp.concatenate([jnp.broadcast_to(pm[:, None, :], (2, t, p)), causal], axis=2)
    ref = attention(q, jnp.concatenate([pk, k], 1), jnp.concatenate([pv, v], 1), mask, 0.3)
    got = jax.jit(lambda *a: causal_attention(*a, 0.3, block, (pk, pv, pm)))(q, k, v, km)
    assert rel_err(got, ref) < 1e-6


@pytest.mark.parametrize("scan_layers", [True, False])
def test_last_only_prefill_equals_full_forward(tiny_model, scan_layers):
    """`last_only=True` (the last layer runs queries/attention/MLP for the last position alone)
    returns the full forward's last-position hidden state and the same keys/values of every
    position, with left-padded rows in the batch."""
    import dataclasses

    from flax import nnx

    from janusflow_jax.nn.llama import positions_from_mask

    llm = nnx.merge(tiny_model.graphdef, tiny_model.params).language_model.model
    llm.cfg = dataclasses.replace(llm.cfg, scan_layers=scan_layers, attn_block=8)
    b, t = 3, 21
    x = jnp.asarray(np.random.default_rng(0).normal(size=(b, t, llm.cfg.hidden_size)), jnp.float32)
    mask = np.ones((b, t), np.int32)
    mask[1, :6] = 0
    mask[2, :13] = 0
    pos = positions_from_mask(jnp.asarray(mask), (b, t))
    h_full, (k_full, v_full), _ = llm._run(x, pos, jnp.asarray(mask), return_kv=True)
    out = llm.prefill(x, pos, jnp.asarray(mask))
    h_last, k_last, v_last = out.hidden, out.k, out.v
    assert h_last.shape == (b, 1, llm.cfg.hidden_size)
    assert rel_err(h_last, h_full[:, -1:]) < 1e-6
    assert rel_err(k_last, k_full) < 1e-6 and rel_err(v_last, v_full) < 1e-6
    with pytest.raises(ValueError, match="last_only"):
        llm._run(x, pos, jnp.asarray(mask), last_only=True, collect_hidden=True)
