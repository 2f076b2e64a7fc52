"""Text answers: prefill the (image-spliced) prompt, then the shared token loop (`decode.py`).

Greedy (temperature 0), temperature, top-k and top-p sampling; stops when every row has produced
EOS or `max_new_tokens` tokens; tokens after a row's EOS are the pad id. Both families use it.
"""

from __future__ import annotations

import dataclasses

import jax

from janusflow_jax.nn.kv_cache import DecodeCache
from janusflow_jax.nn.llama import LlamaForCausalLM, positions_from_mask
from janusflow_jax.sampling.decode import DecodeResult, Sampler, decode_loop


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """Static decoding options (part of the jit cache key)."""

    max_new_tokens: int
    eos_id: int
    pad_id: int
    greedy: bool = True
    top_k: int | None = None
    keep_logits: bool = False  # also return the logits each token was chosen from
    nucleus: bool = True  # apply the top-p filter (False when top_p >= 1: no per-step sort)
    stream: bool | None = None  # decode_loop's: layers read inside each step (None: where it saves memory)


def prefill(llm: LlamaForCausalLM, inputs_embeds: jax.Array, attention_mask: jax.Array, slots: int):
    """Run the prompt; returns (last-position hidden [B,1,D], a cache with `slots` free, next positions [B])."""
    b, t, _ = inputs_embeds.shape
    positions = positions_from_mask(attention_mask, (b, t))
    out = llm.model.prefill(inputs_embeds, positions, attention_mask)
    return out.hidden, DecodeCache.from_prefill(out.k, out.v, attention_mask, slots), positions[:, -1] + 1


def generate(
    llm: LlamaForCausalLM,
    inputs_embeds: jax.Array,
    attention_mask: jax.Array,
    key: jax.Array,
    opts: DecodeOptions,
    temperature=0.0,
    top_p=1.0,
) -> DecodeResult:
    """Prefill, then the token loop over a fixed-size buffer of `max_new_tokens`."""
    n = opts.max_new_tokens
    hidden, cache, next_pos = prefill(llm, inputs_embeds, attention_mask, max(n - 1, 1))
    sampler = Sampler(greedy=opts.greedy, top_k=opts.top_k, nucleus=opts.nucleus)
    return decode_loop(
        llm.model,
        hidden,
        cache,
        next_pos,
        num_tokens=n,
        embed=lambda tok: llm.embed(tok[:, None]),
        logits=lambda h: llm.logits(h)[:, 0],
        choose=lambda lg, step: sampler(lg, step, key, temperature, top_p),
        eos_id=opts.eos_id,
        pad_id=opts.pad_id,
        keep_logits=opts.keep_logits,
        stream=opts.stream,
    )
