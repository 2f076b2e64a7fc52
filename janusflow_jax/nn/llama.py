"""Llama decoder (DeepSeek-LLM-1.3B): RMSNorm, rotate-half RoPE, GQA attention, SwiGLU, scanned layers.

Letters: B batch, T query length, S key length, D model, N query heads, K kv heads, G = N/K,
H head dim, F mlp, V vocab, L layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow_jax.config import LlamaConfig
from janusflow_jax.nn.kv_cache import KVCache
from janusflow_jax.nn.layers import RMSNorm, as_dtype, fan_in_init, normal_init, param
from janusflow_jax.sharding import shard

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def maybe_remat(fn, remat: str):
    if remat == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[remat], prevent_cse=False)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """HF Llama rotary tables for `positions` `[B, T]` → cos, sin `[B, T, H]` in float32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x `[B, T, N, H]`; rotate-half form (no q/k permutation needed for HF weights)."""
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rot * sin


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """q `[B,T,N,H]`, k/v `[B,S,K,H]`, mask `[B,T,S]` bool → `[B,T,N,H]`.

    Masked scores are set to the float32 minimum (as HF's additive mask does), so a query with no
    visible key attends uniformly, exactly like the reference at left-pad positions.
    """
    b, t, n, h = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, t, kh, n // kh, h)
    s = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) * scale
    s = jnp.where(mask[:, None, None, :, :], s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("BKGTS,BSKH->BTKGH", p, v)
    return o.reshape(b, t, n, h)


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, n, k, h, pd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.param_dtype
        self.q_proj = param(rngs, fan_in_init(d), (d, n, h), pd, ("embed", "heads", "head_dim"))
        self.k_proj = param(rngs, fan_in_init(d), (d, k, h), pd, ("embed", "kv_heads", "head_dim"))
        self.v_proj = param(rngs, fan_in_init(d), (d, k, h), pd, ("embed", "kv_heads", "head_dim"))
        self.o_proj = param(rngs, fan_in_init(n * h), (n, h, d), pd, ("heads", "head_dim", "embed"))
        self.scale = h**-0.5
        self.dtype = cfg.dtype

    def __call__(self, x, cos, sin, mask, cache_kv=None, write_index=None):
        dt = as_dtype(self.dtype)
        q = jnp.einsum("BTD,DNH->BTNH", x, self.q_proj[...].astype(dt))
        k = jnp.einsum("BTD,DKH->BTKH", x, self.k_proj[...].astype(dt))
        v = jnp.einsum("BTD,DKH->BTKH", x, self.v_proj[...].astype(dt))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache_kv is not None:
            ck, cv = cache_kv
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, write_index, 0, 0))
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, write_index, 0, 0))
            k, v, new_kv = ck.astype(dt), cv.astype(dt), (ck, cv)
        else:
            new_kv = None
        o = attention(q, k, v, mask, self.scale)
        return jnp.einsum("BTNH,NHD->BTD", o, self.o_proj[...].astype(dt)), new_kv


class LlamaMLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, f, pd = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
        self.gate_proj = param(rngs, fan_in_init(d), (d, f), pd, ("embed", "mlp"))
        self.up_proj = param(rngs, fan_in_init(d), (d, f), pd, ("embed", "mlp"))
        self.down_proj = param(rngs, fan_in_init(f), (f, d), pd, ("mlp", "embed"))
        self.dtype = cfg.dtype

    def __call__(self, x):
        dt = as_dtype(self.dtype)
        g = jnp.einsum("BTD,DF->BTF", x, self.gate_proj[...].astype(dt))
        u = jnp.einsum("BTD,DF->BTF", x, self.up_proj[...].astype(dt))
        return jnp.einsum("BTF,FD->BTD", jax.nn.silu(g) * u, self.down_proj[...].astype(dt))


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
        self.self_attn = LlamaAttention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype)
        self.mlp = LlamaMLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, mask, cache_kv=None, write_index=None):
        h, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv, write_index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return shard(x, ("batch", "seq", "embed")), new_kv


def make_stack(make_one, num: int, rngs: nnx.Rngs):
    """Build `num` copies of a module with parameters stacked on a leading "layers" axis."""

    @nnx.split_rngs(splits=num)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(r):
        return make_one(r)

    return build(rngs)


class Embed(nnx.Module):
    def __init__(self, vocab: int, dim: int, *, param_dtype: str, rngs: nnx.Rngs):
        self.embedding = param(rngs, normal_init(1.0), (vocab, dim), param_dtype, ("vocab", "embed"))

    def __call__(self, ids: jax.Array, dtype) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(dtype)


class LlamaModel(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=cfg.param_dtype, rngs=rngs)
        self.layers = make_stack(lambda r: LlamaDecoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype)

    def __call__(
        self,
        inputs_embeds: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        *,
        collect_hidden: bool = False,
    ):
        """inputs_embeds `[B,T,D]`, positions `[B,T]` int (RoPE), attention_mask `[B,T]` (1 = visible key).

        Without a cache: causal self-attention over the T inputs. With a cache: the T inputs are
        written at slots `end_index … end_index+T-1` and attend causally to every valid slot.
        Returns `(hidden [B,T,D] after the final norm, new cache or None, per-layer outputs
        [L,B,T,D] or None)`.
        """
        cfg = self.cfg
        dt = as_dtype(cfg.dtype)
        b, t, _ = inputs_embeds.shape
        x = shard(inputs_embeds.astype(dt), ("batch", "seq", "embed"))
        key_mask = jnp.ones((b, t), jnp.bool_) if attention_mask is None else attention_mask.astype(jnp.bool_)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        q_idx = jnp.arange(t)
        if cache is None:
            mask = (q_idx[None, :] <= q_idx[:, None])[None] & key_mask[:, None, :]
            start = None
        else:
            start = cache.end_index
            slots = jnp.arange(cache.size)
            slot_mask = jax.lax.dynamic_update_slice(cache.mask, key_mask, (0, start))
            mask = (slots[None, :] <= (start + q_idx)[:, None])[None] & slot_mask[:, None, :]

        graphdef, layer_state = nnx.split(self.layers)

        def body(x, xs):
            state, kv = xs
            layer = nnx.merge(graphdef, state)
            x, new_kv = layer(x, cos, sin, mask, kv, start)
            return x, (new_kv, x if collect_hidden else None)

        body = maybe_remat(body, cfg.remat)
        kv_in = None if cache is None else (cache.k, cache.v)
        x, (kv_out, per_layer) = jax.lax.scan(body, x, (layer_state, kv_in))
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=kv_out[0], v=kv_out[1], mask=slot_mask, end_index=start + t)
        return self.norm(x), new_cache, per_layer


class LlamaForCausalLM(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = LlamaModel(cfg, rngs=rngs)
        self.lm_head = param(rngs, fan_in_init(cfg.hidden_size), (cfg.hidden_size, cfg.vocab_size), cfg.param_dtype, ("embed", "vocab"))

    def embed(self, ids: jax.Array) -> jax.Array:
        return self.model.embed_tokens(ids, as_dtype(self.cfg.dtype))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """`[B,T,D]` → float32 logits `[B,T,V]`."""
        w = self.lm_head[...].astype(hidden.dtype)
        return jnp.einsum("BTD,DV->BTV", hidden, w, preferred_element_type=jnp.float32)

    def __call__(self, input_ids, positions=None, attention_mask=None, cache=None):
        if positions is None:
            positions = positions_from_mask(attention_mask, input_ids.shape)
        hidden, cache, _ = self.model(self.embed(input_ids), positions, attention_mask, cache)
        return self.logits(hidden), cache


def positions_from_mask(attention_mask: jax.Array | None, shape: tuple[int, int]) -> jax.Array:
    """transformers' `generate` rule: `cumsum(mask) - 1`, pads set to 1; arange without a mask."""
    if attention_mask is None:
        return jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32), shape)
    m = attention_mask.astype(jnp.int32)
    pos = jnp.cumsum(m, axis=-1) - 1
    return jnp.where(m == 0, 1, pos).astype(jnp.int32)
