"""The token loop, written once: prefill hidden state in, one token per row per step, KV-cached.

Generic over how a chosen token is embedded (`embed`), how logits are made from the LLM's hidden
state (`logits`: the LM head for text; the image head with the CFG combination of paired rows for
Janus images) and how a token is chosen (`choose`: greedy, temperature / top-k / top-p sampling,
or a replay of recorded noise). Per-step logits are carried only when asked (`keep_logits`): at
Janus's 16384-way image vocabulary over 576 steps they would be ~600 MB per batch.

Laid out for XLA (see `DecodeCache`): the layers' weights are sliced out of their stack once,
before the loop, and the prompt's keys/values are loop constants; the loop state holds only the
small buffers of generated tokens. Narrow weights on XLA:CPU are read per step instead (`stream`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from janusflow_jax.nn.kv_cache import DecodeCache
from janusflow_jax.nn.llama import LlamaModel

__all__ = ["Sampler", "DecodeResult", "decode_loop", "filter_logits", "DECODE_WEIGHTS", "stream_choice",
           "narrow_floats"]

# how a token loop reads the layers' weights: `decode_loop(stream=...)` for each name
DECODE_WEIGHTS = {"auto": None, "sliced": False, "streamed": True}


def stream_choice(name: str) -> bool | None:
    """`decode_loop`'s `stream` for a `--decode-weights` name (auto | sliced | streamed)."""
    if name not in DECODE_WEIGHTS:
        raise ValueError(f"decode_weights must be one of {', '.join(DECODE_WEIGHTS)}, got {name!r}")
    return DECODE_WEIGHTS[name]


def narrow_floats(leaves) -> bool:
    """Any floating leaf narrower than float32 (what XLA:CPU widens to multiply)."""
    return any(jnp.issubdtype(a.dtype, jnp.floating) and jnp.dtype(a.dtype).itemsize < 4 for a in leaves)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How a token is chosen from float32 logits `[B, V]` (static part; part of a jit cache key).

    greedy: argmax. Otherwise softmax(logits / temperature) restricted to the `top_k` most likely
    tokens (None: all; transformers' silent default of 50 is *not* applied) and to the smallest set
    whose probability reaches `top_p` (the most likely token always stays), then one draw.
    `per_row_keys`: each row draws from its own key stream (`keys[b]`, folded with the step), so a
    row's tokens do not depend on which batch it is in; otherwise one key per step for the batch.
    """

    greedy: bool = True
    top_k: int | None = None
    per_row_keys: bool = False
    nucleus: bool = True  # False: skip the top-p filter (a sort over the vocabulary per step) when top_p >= 1

    def __call__(self, logits, step, key, temperature=1.0, top_p=1.0) -> jax.Array:
        if self.greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        masked = filter_logits(logits / jnp.maximum(temperature, 1e-6), self.top_k, top_p if self.nucleus else None)
        if self.per_row_keys:
            keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(key)
            return jax.vmap(jax.random.categorical)(keys, masked).astype(jnp.int32)
        return jax.random.categorical(jax.random.fold_in(key, step), masked, axis=-1).astype(jnp.int32)


def filter_logits(logits: jax.Array, top_k: int | None, top_p) -> jax.Array:
    """Logits `[B, V]` with everything outside the top-k / nucleus set at -inf (`top_p=None`: no nucleus)."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is None:  # no nucleus filter (static)
        return logits
    probs = jax.nn.softmax(logits, axis=-1)
    order = jnp.argsort(-probs, axis=-1)
    sorted_p = jnp.take_along_axis(probs, order, axis=-1)
    keep_sorted = (jnp.cumsum(sorted_p, axis=-1) - sorted_p) < top_p  # always keeps the most likely token
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


@struct.dataclass
class DecodeResult:
    tokens: jax.Array  # [B, N] chosen tokens (pad after a row's EOS)
    logits: jax.Array | None  # [B, N, V] the logits each token was chosen from (keep_logits only)
    steps: jax.Array  # [] tokens produced (< N when every row stopped early)


@struct.dataclass
class _State:
    step: jax.Array
    done: jax.Array
    last_token: jax.Array
    next_pos: jax.Array
    tokens: jax.Array
    logits: jax.Array | None
    new_k: tuple | jax.Array  # per layer, or `[L, ...]` when streaming
    new_v: tuple | jax.Array


def decode_loop(
    llm: LlamaModel,
    first_hidden: jax.Array,
    cache: DecodeCache,
    next_pos: jax.Array,
    *,
    num_tokens: int,
    embed: Callable[[jax.Array], jax.Array],
    logits: Callable[[jax.Array], jax.Array],
    choose: Callable[[jax.Array, jax.Array], jax.Array],
    eos_id: int = -1,
    pad_id: int = 0,
    keep_logits: bool = False,
    on_step: Callable[[jax.Array, jax.Array], None] | None = None,
    stream: bool | None = None,
) -> DecodeResult:
    """Choose `num_tokens` tokens for B rows of an LLM run over R rows (R = B, or 2B for CFG pairs).

    first_hidden `[R, 1, D]`: the prefill's last-position output; `cache`: the prompt K/V with room
    for `num_tokens − 1` fed tokens; next_pos `[R]`: RoPE position of the first fed token.
    embed(tokens `[B]`) → `[R, 1, D]`; logits(hidden `[R, 1, D]`) → float32 `[B, V]`;
    choose(logits `[B, V]`, step) → `[B]` int32. Stops early when every row has produced `eos_id`.
    `on_step(step, tokens)` runs inside the compiled loop after each token is chosen (progress
    reporting; pass `tokens` on to a callback so that it fires after the token exists).

    `stream`: read each layer's weights from their stack inside every step (`decode_streamed`)
    instead of slicing them once before the loop. None (default): stream where the program runs on
    XLA:CPU and the layer weights are narrower than float32 — CPU dots widen bfloat16 to float32,
    and sliced-once weights would then sit in the loop as float32 copies (Janus-Pro-7B: 2× its
    14 GB). Elsewhere the loop is sliced: XLA materialises the slices (a second copy of the layer
    weights while the loop runs) but then reads them without a per-step copy — the faster loop on
    CPU in float32; `stream=True` trades that copy for one layer's slice per step.
    """
    args = (llm, first_hidden, cache, next_pos)
    kw = dict(num_tokens=num_tokens, embed=embed, logits=logits, choose=choose, eos_id=eos_id, pad_id=pad_id,
              keep_logits=keep_logits, on_step=on_step)  # fmt: skip
    if stream is None:
        if not narrow_floats(jax.tree.leaves(nnx.state(llm.layers, nnx.Param))):
            return _loop(*args, stream=False, **kw)
        return jax.lax.platform_dependent(
            cpu=lambda: _loop(*args, stream=True, **kw), default=lambda: _loop(*args, stream=False, **kw)
        )
    return _loop(*args, stream=stream, **kw)


def _loop(llm, first_hidden, cache, next_pos, *, num_tokens, embed, logits, choose, eos_id, pad_id, keep_logits,
          on_step, stream) -> DecodeResult:  # fmt: skip
    first = logits(first_hidden)
    b, v = first.shape
    if stream:
        cache = cache.stacked()
    else:
        layers = llm.layer_modules()  # sliced once, outside the loop

    def append(s: _State, lg) -> _State:
        tok = choose(lg, s.step)
        tok = jnp.where(s.done, pad_id, tok)
        if on_step is not None:
            on_step(s.step, tok)
        return s.replace(
            step=s.step + 1,
            done=s.done | (tok == eos_id),
            last_token=tok,
            tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (0, s.step)),
            logits=None
            if s.logits is None
            else jax.lax.dynamic_update_slice(s.logits, lg[:, None].astype(s.logits.dtype), (0, s.step, 0)),
        )

    state = _State(
        step=jnp.zeros((), jnp.int32),
        done=jnp.zeros((b,), jnp.bool_),
        last_token=jnp.zeros((b,), jnp.int32),
        next_pos=next_pos,
        tokens=jnp.full((b, num_tokens), pad_id, jnp.int32),
        logits=jnp.zeros((b, num_tokens, v), jnp.float32) if keep_logits else None,
        new_k=cache.k,
        new_v=cache.v,
    )
    state = append(state, first)

    def step(s: _State) -> _State:
        """Feed `last_token`, choose the next one, append it."""
        c = cache.replace(k=s.new_k, v=s.new_v, count=s.step - 1)
        if stream:
            hidden, c = llm.decode_streamed(embed(s.last_token), s.next_pos[:, None], c)
        else:
            hidden, c = llm.decode(layers, embed(s.last_token), s.next_pos[:, None], c)
        s = s.replace(next_pos=s.next_pos + 1, new_k=c.k, new_v=c.v)
        return append(s, logits(hidden))

    def cond(s):
        return (s.step < num_tokens) & ~jnp.all(s.done)

    out = jax.lax.while_loop(cond, step, state)
    return DecodeResult(tokens=out.tokens, logits=out.logits, steps=out.step)
