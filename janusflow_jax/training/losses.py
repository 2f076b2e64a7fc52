"""The three JanusFlow training objectives as pure functions (paper §3, Table 1 recipe).

Every loss returns a `(sum, count)` pair rather than a mean: the train step divides by counts taken
over the whole global batch, so gradient accumulation over micro-batches gives exactly the same
gradient as one big batch, and every part is a per-element (or per-token) mean of the global batch.

  * autoregressive:  −log p(ids[i] | ids[<i]) over positions with `loss_mask[i] = 1` (answer tokens);
  * rectified flow:  z_t = t·x + (1−t)·z0, target v = x − z0, squared error of the predicted velocity;
  * REPA:            −cos(h_φ(LLM layer-k states of the image tokens), stop_grad(SigLIP features)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_t(key: jax.Array, n: int, *, kind: str = "logit_normal", mean: float = 0.0, std: float = 1.0) -> jax.Array:
    """Flow times in (0, 1) `[n]`: logit-normal `sigmoid(N(mean, std²))` (SD3's choice) or uniform."""
    if kind == "logit_normal":
        return jax.nn.sigmoid(mean + std * jax.random.normal(key, (n,), jnp.float32))
    if kind == "uniform":
        return jax.random.uniform(key, (n,), jnp.float32)
    raise ValueError(f"unknown time distribution {kind!r} (logit_normal | uniform)")


def rf_pair(x: jax.Array, z0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Noisy latents z_t and the target velocity for clean latents x, noise z0 and times t `[B]`."""
    tb = t.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    return tb * x + (1.0 - tb) * z0, x - z0


def squared_error_sum(pred: jax.Array, target: jax.Array, row_mask: jax.Array | None = None):
    """Σ (pred − target)² in float32 over rows with `row_mask` (all rows without one); count = elements."""
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    per_row = err.reshape(err.shape[0], -1).sum(-1)
    rows = jnp.ones(err.shape[0], jnp.float32) if row_mask is None else row_mask.astype(jnp.float32)
    return jnp.sum(per_row * rows), jnp.sum(rows) * (err.size // err.shape[0])


def next_token_sum(logits: jax.Array, ids: jax.Array, loss_mask: jax.Array):
    """Cross-entropy of predicting `ids[:, i]` from `logits[:, i−1]` where `loss_mask[:, i]` is set.

    Returns (Σ −log p, number of predicted tokens). Logits are upcast to float32."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    target = ids[:, 1:]
    nll = -jnp.take_along_axis(logp, target[..., None].astype(jnp.int32), axis=-1)[..., 0]
    w = loss_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * w), jnp.sum(w)


def resize_tokens(feats: jax.Array, side: int) -> jax.Array:
    """Token grid `[B, M, C]` (M a square) resized to `[B, side², C]` (bilinear, antialiased)."""
    b, m, c = feats.shape
    s = int(round(m**0.5))
    if s * s != m:
        raise ValueError(f"{m} tokens do not form a square grid")
    if s == side:
        return feats
    grid = jax.image.resize(feats.reshape(b, s, s, c), (b, side, side, c), method="linear", antialias=True)
    return grid.reshape(b, side * side, c)


def repa_sum(pred: jax.Array, target: jax.Array, row_mask: jax.Array | None = None, eps: float = 1e-6):
    """Σ over tokens of −cos(pred, stop_grad(target)); `pred`, `target` `[B, N, C]`; count = tokens."""
    p = pred.astype(jnp.float32)
    q = jax.lax.stop_gradient(target.astype(jnp.float32))
    cos = jnp.sum(p * q, -1) / (jnp.linalg.norm(p, axis=-1) * jnp.linalg.norm(q, axis=-1) + eps)
    rows = jnp.ones(p.shape[0], jnp.float32) if row_mask is None else row_mask.astype(jnp.float32)
    return -jnp.sum(cos * rows[:, None]), jnp.sum(rows) * p.shape[1]


def drop_condition(prompt_mask: jax.Array, drop: jax.Array) -> jax.Array:
    """The unconditional form of dropped rows (`drop[b]` True): only the first real token (BOS) stays
    visible, as the official sampler's unconditional rows. Positions are left unchanged by the caller."""
    m = prompt_mask.astype(jnp.int32)
    first = (jnp.cumsum(m, axis=-1) == 1) & (m == 1)
    return jnp.where(drop[:, None], first.astype(jnp.int32), m)
