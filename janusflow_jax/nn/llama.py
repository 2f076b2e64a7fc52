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


def _heads_major(q, k, v):
    """[B,T,N,H], [B,S,K,H] → q [B,K,G,T,H], k/v [B,K,S,H] (batched-matmul friendly on CPU)."""
    b, t, n, h = q.shape
    kh = k.shape[2]
    return q.reshape(b, t, kh, n // kh, h).transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _attend(qh, kh, vh, mask, scale):
    """Heads-major core: qh `[B,K,G,T,H]`, kh/vh `[B,K,S,H]`, mask `[B,T,S]` → `[B,K,G,T,H]`.

    Masked scores are set to the float32 minimum (as HF's additive mask does), so a query with no
    visible key attends uniformly, exactly like the reference at left-pad positions.
    """
    s = jnp.einsum("BKGTH,BKSH->BKGTS", qh, kh, preferred_element_type=jnp.float32) * scale
    s = jnp.where(mask[:, None, None, :, :], s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(vh.dtype)
    return jnp.einsum("BKGTS,BKSH->BKGTH", p, vh)


def _attend_prefix(qh, pk, pv, pmask, kh, vh, mask, scale):
    """Softmax attention over two key blocks without concatenating them: a cached prefix
    (pk/pv `[B,S,K,H]` token-major, as stored in the cache; pmask `[B,S]`) and the new keys
    (kh/vh `[B,K,T',H]`, mask `[B,T,T']`). Equal to attending over the concatenation."""
    s1 = jnp.einsum("BKGTH,BSKH->BKGTS", qh, pk.astype(qh.dtype), preferred_element_type=jnp.float32) * scale
    s2 = jnp.einsum("BKGTH,BKSH->BKGTS", qh, kh, preferred_element_type=jnp.float32) * scale
    lo = jnp.finfo(jnp.float32).min
    s1 = jnp.where(pmask[:, None, None, None, :], s1, lo)
    s2 = jnp.where(mask[:, None, None, :, :], s2, lo)
    mx = jnp.maximum(jnp.max(s1, axis=-1, keepdims=True), jnp.max(s2, axis=-1, keepdims=True))
    p1, p2 = jnp.exp(s1 - mx), jnp.exp(s2 - mx)
    denom = jnp.sum(p1, axis=-1, keepdims=True) + jnp.sum(p2, axis=-1, keepdims=True)
    o = jnp.einsum("BKGTS,BSKH->BKGTH", (p1 / denom).astype(vh.dtype), pv.astype(vh.dtype))
    return o + jnp.einsum("BKGTS,BKSH->BKGTH", (p2 / denom).astype(vh.dtype), vh)


def _tokens_major(o):
    b, kh, g, t, h = o.shape
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t, kh * g, h)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """q `[B,T,N,H]`, k/v `[B,S,K,H]`, mask `[B,T,S]` bool → `[B,T,N,H]`."""
    return _tokens_major(_attend(*_heads_major(q, k, v), mask, scale))


def causal_attention(q, k, v, key_mask, scale: float, block: int, prefix=None) -> jax.Array:
    """T new tokens attending causally among themselves (and to every valid key of a read-only
    `prefix=(k [B,P,K,H], v, mask [B,P])`), computed in query blocks of `block`.

    Block i only materialises scores for the keys it can see (prefix + new keys up to its end): on
    CPU this halves the work of the image-token attention and keeps score tiles in cache.
    """
    b, t = q.shape[:2]
    block = block if 0 < block < t else t
    qh, kh, vh = _heads_major(q, k, v)
    # A query that sees no key at all (a left-pad position) attends uniformly to every key in the
    # unblocked form (see `_attend`); keep exactly that behaviour under blocking.
    total = jnp.sum(vh.astype(jnp.float32), axis=2)
    count = t
    if prefix is not None:
        pk, pv, pm = prefix
        total, count = total + jnp.sum(pv.astype(jnp.float32), axis=1), count + pk.shape[1]
    uniform = (total / count).astype(vh.dtype)[:, :, None, None, :]
    outs = []
    for a in range(0, t, block):
        e = min(a + block, t)
        mask = (jnp.arange(e)[None, :] <= jnp.arange(a, e)[:, None])[None] & key_mask[:, None, :e]
        if prefix is None:
            o = _attend(qh[:, :, :, a:e], kh[:, :, :e], vh[:, :, :e], mask, scale)
            empty = ~jnp.any(mask, axis=-1)
        else:
            o = _attend_prefix(qh[:, :, :, a:e], pk, pv, pm, kh[:, :, :e], vh[:, :, :e], mask, scale)
            empty = ~(jnp.any(mask, axis=-1) | jnp.any(pm, axis=-1, keepdims=True))
        if block < t:
            o = jnp.where(empty[:, None, None, :, None], uniform, o)
        outs.append(o)
    return _tokens_major(outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3))


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, n, k, h, pd = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.param_dtype,
        )
        self.q_proj = param(rngs, fan_in_init(d), (d, n, h), pd, ("embed", "heads", "head_dim"))
        self.k_proj = param(rngs, fan_in_init(d), (d, k, h), pd, ("embed", "kv_heads", "head_dim"))
        self.v_proj = param(rngs, fan_in_init(d), (d, k, h), pd, ("embed", "kv_heads", "head_dim"))
        self.o_proj = param(rngs, fan_in_init(n * h), (n, h, d), pd, ("heads", "head_dim", "embed"))
        self.scale = h**-0.5
        self.dtype = cfg.dtype

    def project(self, x, cos, sin):
        """x `[B,T,D]` → q `[B,T,N,H]`, k, v `[B,T,K,H]` (RoPE applied to q and k)."""
        dt = as_dtype(self.dtype)
        q = jnp.einsum("BTD,DNH->BTNH", x, self.q_proj[...].astype(dt))
        k = jnp.einsum("BTD,DKH->BTKH", x, self.k_proj[...].astype(dt))
        v = jnp.einsum("BTD,DKH->BTKH", x, self.v_proj[...].astype(dt))
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def output(self, o):
        return jnp.einsum("BTNH,NHD->BTD", o, self.o_proj[...].astype(as_dtype(self.dtype)))


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

    def __call__(self, x, cos, sin, attend):
        """`attend(q, k, v) -> (o, aux)` decides which keys the new tokens see (see LlamaModel)."""
        q, k, v = self.self_attn.project(self.input_layernorm(x), cos, sin)
        o, aux = attend(q, k, v)
        x = x + self.self_attn.output(o)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return shard(x, ("batch", "seq", "embed")), aux


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
        prefix: KVCache | None = None,
        return_kv: bool = False,
        collect_hidden: bool = False,
        capture_layer: int | None = None,
    ):
        """inputs_embeds `[B,T,D]`, positions `[B,T]` int (RoPE), attention_mask `[B,T]` (1 = visible key).

        Three ways to attend:
          * default: causal self-attention over the T inputs (prefill, training, full recompute);
            `return_kv=True` also returns their keys/values `[L,B,T,K,H]` (to build a cache);
          * `cache=`: the inputs attend to every valid cache slot and causally among themselves, and
            their K/V are then written at slots `end_index …` (token-by-token decoding);
          * `prefix=`: the inputs attend to a read-only cached prefix plus causally among themselves;
            the prefix is not modified (the ODE steps of image generation).
        Returns `(hidden [B,T,D] after the final norm, new cache | (k, v) | None, per-layer outputs
        [L,B,T,D] | None)`; with `capture_layer=k` the third item is instead the output of the k-th
        layer `[B,T,D]` (k = 1 … L, before the final norm: transformers' `hidden_states[k]`).
        """
        cfg = self.cfg
        dt = as_dtype(cfg.dtype)
        b, t, _ = inputs_embeds.shape
        x = shard(inputs_embeds.astype(dt), ("batch", "seq", "embed"))
        key_mask = jnp.ones((b, t), jnp.bool_) if attention_mask is None else attention_mask.astype(jnp.bool_)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        scale = cfg.head_dim**-0.5
        graphdef, layer_state = nnx.split(self.layers)

        if cache is not None:  # decoding: the cache is a read-only prefix, then the new K/V are written once
            prefix, return_kv = cache, True

        def body(carry, xs):
            x, captured = carry
            state, pre, index = xs

            def attend(q, k, v):
                pfx = None if pre is None else (pre[0], pre[1], prefix.mask)
                o = causal_attention(q, k, v, key_mask, scale, cfg.attn_block, pfx)
                return o, ((k, v) if return_kv else None)

            x, kv = nnx.merge(graphdef, state)(x, cos, sin, attend)
            if capture_layer is not None:
                captured = jnp.where(index == capture_layer - 1, x, captured)
            return (x, captured), (kv, x if collect_hidden else None)

        if capture_layer is not None and not 1 <= capture_layer <= cfg.num_hidden_layers:
            raise ValueError(f"capture_layer must be in 1..{cfg.num_hidden_layers}, got {capture_layer}")
        pre = None if prefix is None else (prefix.k, prefix.v)
        captured = jnp.zeros_like(x) if capture_layer is not None else None
        index = jnp.arange(cfg.num_hidden_layers)
        (x, captured), (extra, per_layer) = jax.lax.scan(
            maybe_remat(body, cfg.remat), (x, captured), (layer_state, pre, index)
        )
        if capture_layer is not None:
            per_layer = captured
        if cache is not None:
            k_new, v_new = extra
            at = (0, 0, cache.end_index, 0, 0)
            extra = KVCache(
                k=jax.lax.dynamic_update_slice(cache.k, k_new.astype(cache.k.dtype), at),
                v=jax.lax.dynamic_update_slice(cache.v, v_new.astype(cache.v.dtype), at),
                mask=jax.lax.dynamic_update_slice(cache.mask, key_mask, (0, cache.end_index)),
                end_index=cache.end_index + t,
            )
        return self.norm(x), extra, per_layer


class LlamaForCausalLM(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = LlamaModel(cfg, rngs=rngs)
        self.lm_head = param(
            rngs, fan_in_init(cfg.hidden_size), (cfg.hidden_size, cfg.vocab_size), cfg.param_dtype, ("embed", "vocab")
        )

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
