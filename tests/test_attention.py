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
