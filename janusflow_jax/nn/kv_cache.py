"""LLM key/value caches: pytrees passed in and returned by pure forward passes.

`KVCache` (`[L, B, S, K, H]`) holds a prompt that later tokens attend to read-only (the image
tokens of every ODE step). `DecodeCache` serves token-by-token text decoding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    """k, v `[L, B, S, K, H]`; `mask` `[B, S]` marks slots holding a key that may be attended to
    (0 for left padding, masked CFG prompt tokens and unwritten slots); `end_index` is the number of
    filled slots (a scalar shared by the batch: rows are left-padded to a common length)."""

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    end_index: jax.Array

    @property
    def size(self) -> int:
        return self.k.shape[2]

    @classmethod
    def from_prefill(cls, k: jax.Array, v: jax.Array, mask: jax.Array, size: int | None = None) -> "KVCache":
        """Cache holding a prefilled prompt: k, v `[L, B, T, K, H]` (from `return_kv=True`), mask `[B, T]`;
        `size` ≥ T slots (the rest empty, for decoding)."""
        t = k.shape[2]
        size = t if size is None else size
        if size < t:
            raise ValueError(f"cache size {size} < prompt length {t}")
        pad = ((0, 0), (0, 0), (0, size - t), (0, 0), (0, 0))
        return cls(
            k=jnp.pad(k, pad),
            v=jnp.pad(v, pad),
            mask=jnp.pad(mask.astype(jnp.bool_), ((0, 0), (0, size - t))),
            end_index=jnp.asarray(t, jnp.int32),
        )


@struct.dataclass
class DecodeCache:
    """Keys/values for token-by-token decoding, laid out for how XLA runs a token loop.

    Per layer (tuples of L arrays, not one `[L, ...]` stack: slicing a stack inside the loop copies
    the slice on every token), with keys `[B, K, H, S]` and values `[B, K, S, H]`: the layouts the
    two attention matmuls read without a transpose. The prompt part `prompt_k`/`prompt_v` (T slots,
    `prompt_mask` `[B,T]`) is never written while decoding: give it to the loop as a constant, not
    as loop state, and XLA never copies it. Generated tokens go to `k`/`v` (M slots), slot `count`
    next (shared by the batch); writing these small buffers is all a step updates.
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
    def from_prefill(cls, k: jax.Array, v: jax.Array, mask: jax.Array, slots: int) -> "DecodeCache":
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
