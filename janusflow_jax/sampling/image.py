"""Text-to-image: CFG batching, one prompt prefill, a scanned rectified-flow ODE, VAE decode.

Flow time t ∈ [0, 1] with 0 = noise; the networks see t·1000. Euler: z ← z + dt·v with
v = w·v_cond − (w−1)·v_uncond; the grid is t_k = k/steps (t = 1 is never evaluated).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from janusflow_jax.nn.janusflow import JanusFlow
from janusflow_jax.nn.kv_cache import KVCache
from janusflow_jax.nn.layers import as_dtype


@dataclasses.dataclass(frozen=True)
class CfgBatch:
    """LLM inputs of the 2B CFG rows (B conditional, then B unconditional)."""

    tokens: jax.Array  # [2B, P] prompt tokens without the final image tag
    mask: jax.Array  # [2B, P] 1 = visible key
    positions: jax.Array  # [2B, P + 1 + N] RoPE positions of prefix, t_emb and image tokens


def cfg_batch(
    prompt_ids, prompt_mask, num_image_tokens: int, pad_id: int = 0, uncond_ids=None, uncond_mask=None
) -> CfgBatch:
    """Build the CFG rows from left-padded prompts `[B, L]` ending with the image start tag.

    Unconditional rows: the same row with every token after BOS replaced by `pad_id` and masked
    (BOS stays visible); their positions are those of the conditional row (not mask-derived).
    With `uncond_ids`/`uncond_mask` (a negative prompt, same length L) those rows are used instead.
    """
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, jnp.int32)
    b, length = prompt_ids.shape
    first = jnp.argmax(prompt_mask, axis=1)  # index of BOS (first real token) per row
    idx = jnp.arange(length)[None, :]
    if uncond_ids is None:
        un_mask = (idx == first[:, None]).astype(jnp.int32)
        un_ids = jnp.where(idx <= first[:, None], prompt_ids, pad_id)
        un_pos_mask = prompt_mask
    else:
        un_ids = jnp.asarray(uncond_ids, jnp.int32)
        un_mask = jnp.asarray(uncond_mask, jnp.int32)
        un_pos_mask = un_mask
    tokens = jnp.concatenate([prompt_ids, un_ids], 0)[:, :-1]
    mask = jnp.concatenate([prompt_mask, un_mask], 0)[:, :-1]
    pos_mask = jnp.concatenate([prompt_mask, un_pos_mask], 0)
    # prefix positions: cumsum(mask) - 1 (arange for unpadded rows); the dropped tag's slot is t_emb
    pos = jnp.clip(jnp.cumsum(pos_mask, axis=1) - 1, 0)
    tail = pos[:, -1:] + jnp.arange(1, num_image_tokens + 1)[None, :]
    positions = jnp.concatenate([pos, tail], axis=1)
    return CfgBatch(tokens=tokens, mask=mask, positions=positions)


def time_grid(num_steps: int, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Static ×1000 timesteps and the step size, rounded to `dtype` as the official code does."""
    t = np.asarray([k / num_steps * 1000.0 for k in range(num_steps)], np.float64)
    dt = np.asarray(1.0 / num_steps, np.float64)
    dt_ = np.dtype(as_dtype(dtype))  # host-side rounding (ml_dtypes), so this is safe under jit
    return t.astype(dt_).astype(np.float32), dt.astype(dt_).astype(np.float32)


def guided(v: jax.Array, w: float) -> jax.Array:
    b = v.shape[0] // 2
    return w * v[:b] - (w - 1.0) * v[b:]


def prefill_prompt(model: JanusFlow, batch: CfgBatch) -> KVCache:
    """Run the prompt prefix once; its K/V do not depend on t or z (causality), so every ODE step
    reads them as a read-only prefix."""
    plen = batch.tokens.shape[1]
    embeds = model.language_model.embed(batch.tokens)
    out = model.language_model.model.prefill(embeds, batch.positions[:, :plen], batch.mask)
    return KVCache.from_prefill(out.k, out.v, batch.mask)


def velocity_fn(model: JanusFlow, batch: CfgBatch, cache: KVCache | None, cfg_weight: float):
    """v(z, t1000) → guided velocity `[B, ...]`; recomputes the prompt when `cache` is None."""
    prefix = None if cache is not None else model.language_model.embed(batch.tokens)

    def v(z, t1000):
        zz = jnp.concatenate([z, z], 0)
        tt = jnp.broadcast_to(jnp.asarray(t1000, jnp.float32), (zz.shape[0],))
        out = model.velocity(prefix, batch.mask, batch.positions, zz, tt, cache)
        return guided(out.astype(jnp.float32), cfg_weight).astype(z.dtype)

    return v


def print_step(step, total, _after=None) -> None:
    """Host side of `ode_solve(progress=True)` (runs through `jax.debug.callback`): a tqdm bar on
    standard error (`janusflow_jax.progress.steps`)."""
    from janusflow_jax import progress

    progress.steps(int(step) + 1, int(total))


def ode_solve(
    v, z0: jax.Array, t_grid: np.ndarray, dt: np.ndarray, solver: str = "euler", progress: bool = False
) -> jax.Array:
    """Integrate dz/dt = v(z, t·1000) over the static grid with `jax.lax.scan` (carry: z only).
    `progress=True` prints each finished step from inside the compiled loop."""
    dt = jnp.asarray(dt, jnp.float32)
    n = len(t_grid)

    if solver == "euler":

        def step(z, t):
            return (z + dt.astype(z.dtype) * v(z, t)).astype(z.dtype), None

    elif solver == "heun":
        # Heun (explicit trapezoid) on [t, t + dt]: two evaluations per step.
        def step(z, t):
            k1 = v(z, t)
            k2 = v((z + dt.astype(z.dtype) * k1).astype(z.dtype), t + dt * 1000.0)
            return (z + dt.astype(z.dtype) * 0.5 * (k1 + k2)).astype(z.dtype), None

    else:
        raise ValueError(f"unknown solver {solver!r} (euler or heun)")

    def step_with_progress(z, xs):
        t, i = xs
        z, _ = step(z, t)
        if progress:
            jax.debug.callback(print_step, i, n, z.reshape(-1)[0])  # reads z: fires after the step
        return z, None

    z, _ = jax.lax.scan(step_with_progress, z0, (jnp.asarray(t_grid, jnp.float32), jnp.arange(n)))
    return z


def sample_latents(
    model: JanusFlow,
    batch: CfgBatch,
    z0: jax.Array,
    *,
    num_steps: int,
    cfg_weight: float,
    solver: str = "euler",
    use_cache: bool = True,
    progress: bool = False,
) -> jax.Array:
    """The whole ODE from noise `z0` `[B,H,W,4]` to latents; the prompt is prefilled once."""
    cache = prefill_prompt(model, batch) if use_cache else None
    t_grid, dt = time_grid(num_steps, model.cfg.llm.dtype)
    return ode_solve(velocity_fn(model, batch, cache, cfg_weight), z0, t_grid, dt, solver, progress)
