"""Janus text-to-image, the official procedure (`generation_inference.py`), compiled.

CFG rows: every prompt row (BOS … `<begin_of_image>`) and its unconditional partner, the same ids
with every token but BOS and the final `<begin_of_image>` replaced by the pad id — unmasked, as the
official code runs them. The prompt is prefilled once; then the shared token loop feeds each chosen
code back through `gen_aligner(gen_embed(code))` to both rows of its pair and reads the guided
logits `u + w·(c − u)` from `gen_head` at the last position. Beyond the official code: left-padded
batches of different prompts (positions from the mask: equal to the unpadded run), a negative prompt
as the unconditional row, and per-image key streams (an image's codes do not depend on its batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from janusflow_jax.nn.janus import Janus
from janusflow_jax.nn.kv_cache import DecodeCache
from janusflow_jax.sampling.decode import DecodeResult, Sampler, decode_loop, filter_logits

__all__ = ["cfg_rows", "guided", "sample_codes", "teacher_forced_logits", "uint8_images", "unconditional_ids"]


def unconditional_ids(ids, mask, pad_id: int):
    """The unconditional form of left-padded prompts `[B, L]`: every token but BOS (the first real
    token) and the final `<begin_of_image>` replaced by `pad_id`, left pads kept (the mask does not
    change). What the sampler runs as the CFG partner row, and what training drops a prompt to."""
    idx = jnp.arange(ids.shape[1])[None, :]
    first = jnp.argmax(mask, axis=1)[:, None]
    keep = (idx == first) | (idx == ids.shape[1] - 1) | (mask == 0)
    return jnp.where(keep, ids, pad_id)


def cfg_rows(prompt_ids, prompt_mask, pad_id: int, neg_ids=None, neg_mask=None):
    """Left-padded prompts `[B, L]` (+ mask) → tokens, mask, positions `[2B, L]`: B conditional
    rows, then B unconditional rows (or the negative prompt's rows, same length L)."""
    ids = jnp.asarray(prompt_ids, jnp.int32)
    mask = jnp.asarray(prompt_mask, jnp.int32)
    if neg_ids is None:
        un_ids, un_mask = unconditional_ids(ids, mask, pad_id), mask
    else:
        un_ids, un_mask = jnp.asarray(neg_ids, jnp.int32), jnp.asarray(neg_mask, jnp.int32)
    tokens = jnp.concatenate([ids, un_ids], 0)
    rows_mask = jnp.concatenate([mask, un_mask], 0)
    positions = jnp.clip(jnp.cumsum(rows_mask, axis=1) - 1, 0).astype(jnp.int32)
    return tokens, rows_mask, positions


def guided(logits: jax.Array, cfg_weight) -> jax.Array:
    """Rows [cond B; uncond B] `[2B, ..., K]` → `u + w·(c − u)` `[B, ..., K]` (the official order)."""
    b = logits.shape[0] // 2
    c, u = logits[:b], logits[b:]
    return u + cfg_weight * (c - u)


def sample_codes(
    model: Janus,
    tokens,
    mask,
    positions,
    *,
    num_tokens: int,
    cfg_weight,
    sampler: Sampler,
    keys,
    temperature=1.0,
    top_p=1.0,
    exp_noise=None,
    keep_logits: bool = False,
    on_step=None,
    stream: bool | None = None,
) -> DecodeResult:
    """Codes `[B, num_tokens]` for the CFG rows from `cfg_rows`.

    `keys` `[B]` one key stream per image (sampler.per_row_keys) or one key. `exp_noise`
    `[num_tokens, B, K]` replays recorded Exp(1) noise instead of drawing: token = argmax(probs / q),
    which is how torch's `multinomial(probs, 1)` picks (for parity with a recorded official run).
    """
    llm = model.language_model
    emb = llm.embed(tokens)
    out = llm.model.prefill(emb, positions, mask)
    cache = DecodeCache.from_prefill(out.k, out.v, mask, max(num_tokens - 1, 1))
    next_pos = positions[:, -1] + 1

    def logits(hidden):
        return guided(model.gen_head_logits(hidden[:, 0]), cfg_weight)

    def embed(tok):
        e = model.gen_image_embeds(tok)[:, None]
        return jnp.concatenate([e, e], 0)

    if exp_noise is not None:
        noise = jnp.asarray(exp_noise, jnp.float32)

        def choose(lg, step):
            probs = jax.nn.softmax(
                filter_logits(lg / temperature, sampler.top_k, top_p if sampler.nucleus else None), axis=-1
            )
            return jnp.argmax(probs / noise[step], axis=-1).astype(jnp.int32)

    else:

        def choose(lg, step):
            return sampler(lg, step, keys, temperature, top_p)

    return decode_loop(
        llm.model,
        out.hidden,
        cache,
        next_pos,
        num_tokens=num_tokens,
        embed=embed,
        logits=logits,
        choose=choose,
        keep_logits=keep_logits,
        on_step=on_step,
        stream=stream,
    )


def teacher_forced_logits(model: Janus, tokens, mask, positions, codes, cfg_weight) -> jax.Array:
    """Guided logits `[B, N, K]` of every step when `codes` `[B, N]` are fed back: one causal
    forward over [prompt, codes[:, :N−1]] (what the token loop computes step by step)."""
    llm = model.language_model
    n = codes.shape[1]
    img = model.gen_image_embeds(codes[:, : n - 1])
    emb = jnp.concatenate([llm.embed(tokens), jnp.concatenate([img, img], 0)], axis=1)
    pos = jnp.concatenate([positions, positions[:, -1:] + jnp.arange(1, n)[None, :]], axis=1)
    m = jnp.concatenate([mask, jnp.ones((mask.shape[0], n - 1), mask.dtype)], axis=1)
    hidden = llm.model.forward(emb, pos, m).hidden[:, -n:]
    return guided(model.gen_head_logits(hidden), cfg_weight)


def uint8_images(x: jax.Array) -> jax.Array:
    """Decoded images in about [-1, 1] → uint8, as the official scripts: clip((x+1)/2·255), truncated."""
    return jnp.clip((x.astype(jnp.float32) + 1.0) / 2.0 * 255.0, 0.0, 255.0).astype(jnp.uint8)
