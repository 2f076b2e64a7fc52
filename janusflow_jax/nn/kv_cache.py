"""The LLM key/value cache: a pytree passed in and returned by pure forward passes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from janusflow_jax.config import LlamaConfig
from janusflow_jax.nn.layers import as_dtype

CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")


@struct.dataclass
class KVCache:
    """k, v `[L, B, S, K, H]`; `mask` `[B, S]` marks slots holding a key that may be attended to
    (0 for left padding, masked CFG prompt tokens and unwritten slots); `end_index` is the next free
    slot (a scalar shared by the batch: rows are left-padded to a common length)."""

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    end_index: jax.Array

    @property
    def size(self) -> int:
        return self.k.shape[2]

    @classmethod
    def init(cls, cfg: LlamaConfig, batch: int, size: int, dtype: str | None = None) -> "KVCache":
        dt = as_dtype(dtype or cfg.dtype)
        shape = (cfg.num_hidden_layers, batch, size, cfg.num_key_value_heads, cfg.head_dim)
        return cls(
            k=jnp.zeros(shape, dt),
            v=jnp.zeros(shape, dt),
            mask=jnp.zeros((batch, size), jnp.bool_),
            end_index=jnp.zeros((), jnp.int32),
        )

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
