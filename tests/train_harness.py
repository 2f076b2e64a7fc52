"""Shared by the training-task tests (janusflow, janus, …): one step on a sharded mesh against the
same step on one device, with the same parameters, batch and state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from janusflow_jax.sharding import use_mesh


def sharded_step(built, state: dict, batch: dict):
    """`built`'s jitted (donating) step on its mesh from a copy of `state` → (new state, metrics)."""
    mine = jax.tree.map(jnp.copy, state)  # device_put may alias the caller's buffers, and the step donates
    with use_mesh(built.mesh):
        f = built.jit(batch)
        return f(jax.device_put(mine, built.layout.state_shardings), built.global_batch(batch))


def assert_step_matches(ref, got, keys, *, rtol=2e-5, param_rtol=1e-4, param_atol=2e-6):
    """Metrics `keys` and every parameter of two (state, metrics) results agree to float32 reduction-order noise."""
    (ref_state, ref_m), (new_state, m) = ref, got
    for k in keys:
        assert float(m[k]) == pytest.approx(float(ref_m[k]), rel=rtol, abs=1e-6), k
    for a, b in zip(jax.tree.leaves(ref_state["params"]), jax.tree.leaves(new_state["params"])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=param_rtol, atol=param_atol)
    return new_state


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
