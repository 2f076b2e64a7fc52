"""Image understanding: splice image features, prefill the KV cache, decode in a `lax.while_loop`.

Greedy (temperature 0), temperature and top-p sampling; stops when every row has produced EOS or
`max_new_tokens` tokens; tokens after a row's EOS are the pad id.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from janusflow_jax.nn.janusflow import JanusFlow
from janusflow_jax.nn.kv_cache import KVCache
from janusflow_jax.nn.llama import positions_from_mask


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """Static decoding options (part of the jit cache key)."""

    max_new_tokens: int
    eos_id: int
    pad_id: int
    greedy: bool = True


@struct.dataclass
class SamplingState:
    step: jax.Array  # [] tokens produced so far
    done: jax.Array  # [B] row has produced EOS
    last_token: jax.Array  # [B]
    next_pos: jax.Array  # [B] RoPE position at which `last_token` will be fed
    tokens: jax.Array  # [B, max_new_tokens]
    logits: jax.Array  # [B, max_new_tokens, V] logits each token was chosen from
    cache: KVCache
    key: jax.Array


def choose(logits: jax.Array, key: jax.Array, temperature, top_p, greedy: bool) -> jax.Array:
    """Next token from float32 logits `[B, V]`: argmax, or temperature + nucleus sampling."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / jnp.maximum(temperature, 1e-6)
    probs = jax.nn.softmax(logits, axis=-1)
    order = jnp.argsort(-probs, axis=-1)
    sorted_p = jnp.take_along_axis(probs, order, axis=-1)
    cum = jnp.cumsum(sorted_p, axis=-1)
    keep_sorted = (cum - sorted_p) < top_p  # always keeps the most likely token
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    masked = jnp.where(keep, logits, -jnp.inf)
    return jax.random.categorical(key, masked, axis=-1).astype(jnp.int32)


def prefill(model: JanusFlow, inputs_embeds: jax.Array, attention_mask: jax.Array, cache_size: int):
    """Run the prompt into a fresh cache; returns (last-position logits [B,V], cache, next positions [B])."""
    b, t, _ = inputs_embeds.shape
    positions = positions_from_mask(attention_mask, (b, t))
    hidden, (k, v), _ = model.language_model.model(inputs_embeds, positions, attention_mask, return_kv=True)
    cache = KVCache.from_prefill(k, v, attention_mask, cache_size)
    logits = model.language_model.logits(hidden[:, -1:])[:, 0]
    return logits, cache, positions[:, -1] + 1


def decode_step(model: JanusFlow, state: SamplingState, opts: DecodeOptions, temperature, top_p) -> SamplingState:
    """Feed `last_token`, choose the next one, append it."""
    emb = model.language_model.embed(state.last_token[:, None])
    ones = jnp.ones_like(state.last_token[:, None])
    hidden, cache, _ = model.language_model.model(emb, state.next_pos[:, None], ones, state.cache)
    logits = model.language_model.logits(hidden)[:, 0]
    state = state.replace(next_pos=state.next_pos + 1)
    return _append(state, logits, cache, opts, temperature, top_p)


def _append(state: SamplingState, logits, cache, opts: DecodeOptions, temperature, top_p) -> SamplingState:
    tok = choose(logits, jax.random.fold_in(state.key, state.step), temperature, top_p, opts.greedy)
    tok = jnp.where(state.done, opts.pad_id, tok)
    done = state.done | (tok == opts.eos_id)
    return SamplingState(
        step=state.step + 1,
        done=done,
        last_token=tok,
        next_pos=state.next_pos,
        tokens=jax.lax.dynamic_update_slice(state.tokens, tok[:, None], (0, state.step)),
        logits=jax.lax.dynamic_update_slice(
            state.logits, logits[:, None].astype(state.logits.dtype), (0, state.step, 0)
        ),
        cache=cache,
        key=state.key,
    )


def generate(
    model: JanusFlow,
    inputs_embeds: jax.Array,
    attention_mask: jax.Array,
    key: jax.Array,
    opts: DecodeOptions,
    temperature=0.0,
    top_p=1.0,
) -> SamplingState:
    """Prefill, then `lax.while_loop` over the fixed-size token buffer."""
    b, t, _ = inputs_embeds.shape
    n = opts.max_new_tokens
    logits, cache, next_pos = prefill(model, inputs_embeds, attention_mask, t + n)
    state = SamplingState(
        step=jnp.zeros((), jnp.int32),
        done=jnp.zeros((b,), jnp.bool_),
        last_token=jnp.zeros((b,), jnp.int32),
        next_pos=next_pos,
        tokens=jnp.full((b, n), opts.pad_id, jnp.int32),
        logits=jnp.zeros((b, n, logits.shape[-1]), jnp.float32),
        cache=cache,
        key=key,
    )
    state = _append(state, logits, cache, opts, temperature, top_p)

    def cond(s):
        return (s.step < n) & ~jnp.all(s.done)

    return jax.lax.while_loop(cond, lambda s: decode_step(model, s, opts, temperature, top_p), state)
