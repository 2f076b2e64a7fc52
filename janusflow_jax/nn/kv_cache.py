"""LLM key/value caches: pytrees passed in and returned by pure forward passes.

`KVCache` (`[L, B, T, K, H]`) holds a prompt that later tokens attend to read-only (the image
tokens of every ODE step). `DecodeCache` serves token-by-token text decoding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    """A prefilled prompt that later tokens attend to read-only: k, v `[L, B, T, K, H]`; `mask` `[B, T]`
    marks the keys that may be attended to (0 for left padding and masked CFG prompt tokens)."""

    k: jax.Array
    v: jax.Array
    mask: jax.Array

    @classmethod
    def from_prefill(cls, k: jax.Array, v: jax.Array, mask: jax.Array) -> KVCache:
        """From a prefill's k, v `[L, B, T, K, H]` (`return_kv=True`) and its mask `[B, T]`."""
        return cls(k=k, v=v, mask=mask.astype(jnp.bool_))


@struct.dataclass
class DecodeCache:
    """Keys/values for token-by-token decoding, laid out for how XLA runs a token loop.

    Per layer (tuples of L arrays, not one `[L, ...]` stack: slicing a stack inside the loop copies
    the slice on every token), with keys `[B, K, H, S]` and values `[B, K, S, H]`: the layouts the
    two attention matmuls read without a transpose. The prompt part `prompt_k`/`prompt_v` (T slots,
    `prompt_mask` `[B,T]`) is never written while decoding: give it to the loop as a constant, not
    as loop state, and XLA never copies it. Generated tokens go to `k`/`v` (M slots), slot `count`
    next (shared by the batch); a step writes its token there first and then attends over the
    updated buffers (read-then-write made XLA copy every layer's buffers on every step).
    """

    prompt_k: tuple[jax.Array, ...]
    prompt_v: tuple[jax.Array, ...]
    prompt_mask: jax.Array
    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    count: jax.Array

    @property
    def slots(self) -> int:
        return self.v[0].shape[2]

    @classmethod
    def from_prefill(cls, k: jax.Array, v: jax.Array, mask: jax.Array, slots: int) -> DecodeCache:
        """From a prefilled prompt: k, v `[L, B, T, K, H]` (`return_kv=True`), mask `[B, T]`; room for
        `slots` generated tokens."""
        b, _, kh, h = k.shape[1:]
        n = k.shape[0]
        return cls(
            prompt_k=tuple(k[i].transpose(0, 2, 3, 1) for i in range(n)),
            prompt_v=tuple(v[i].transpose(0, 2, 1, 3) for i in range(n)),
            prompt_mask=mask.astype(jnp.bool_),
            k=(jnp.zeros((b, kh, h, slots), k.dtype),) * n,
            v=(jnp.zeros((b, kh, slots, h), v.dtype),) * n,
            count=jnp.zeros((), jnp.int32),
        )

    def stacked(self) -> DecodeCache:
        """The per-layer tuples as `[L, ...]` stacks (for `LlamaModel.decode_streamed`, which scans
        over the layers; `slots` and `count` read the same)."""
        return self.replace(
            prompt_k=jnp.stack(self.prompt_k),
            prompt_v=jnp.stack(self.prompt_v),
            k=jnp.stack(self.k),
            v=jnp.stack(self.v),
        )
