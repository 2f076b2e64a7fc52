"""Llama decoder (DeepSeek-LLM-1.3B): RMSNorm, rotate-half RoPE, GQA attention, SwiGLU, scanned layers.

Letters: B batch, T query length, S key length, D model, N query heads, K kv heads, G = N/K,
H head dim, F mlp, V vocab, L layers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from janusflow_jax.config import LlamaConfig
from janusflow_jax.nn.kv_cache import DecodeCache, KVCache
from janusflow_jax.nn.layers import RMSNorm, as_dtype, fan_in_init, normal_init, param
from janusflow_jax.sharding import gather_layer, shard

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


def _attend_blocks(qh, blocks, scale):
    """Softmax attention over several key blocks without concatenating them (equal to attending over
    their concatenation). qh `[B,K,G,T,H]`; each block `(k, k_layout, v, v_layout, mask)` gives its
    arrays' layouts as einsum subscripts over B, K, S, H (e.g. "BKSH" heads-major, "BSKH" token-major
    as a `KVCache` stores them, "BKHS" for keys laid out for the score matmul); mask broadcastable
    to `[B,T,S]`. → `[B,K,G,T,H]`."""
    lo = jnp.finfo(jnp.float32).min
    scores = []
    for k, k_layout, _, _, mask in blocks:
        s = jnp.einsum(f"BKGTH,{k_layout}->BKGTS", qh, k.astype(qh.dtype), preferred_element_type=jnp.float32)
        scores.append(jnp.where(mask[:, None, None, :, :], s * scale, lo))
    mx = scores[0].max(axis=-1, keepdims=True)
    for s in scores[1:]:
        mx = jnp.maximum(mx, s.max(axis=-1, keepdims=True))
    probs = [jnp.exp(s - mx) for s in scores]
    denom = sum(jnp.sum(p, axis=-1, keepdims=True) for p in probs)
    out = None
    for p, (_, _, v, v_layout, _) in zip(probs, blocks):
        o = jnp.einsum(f"BKGTS,{v_layout}->BKGTH", (p / denom).astype(qh.dtype), v.astype(qh.dtype))
        out = o if out is None else out + o
    return out


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
    # Under blocking, the keys are cut into the same fixed blocks as the queries, laid out for the
    # score matmul once per layer, and query block i reads key blocks 0..i in place. (Slicing all
    # keys up to each query block's end instead made XLA:CPU copy, RoPE fused in, ~4x the keys per
    # layer: 104 → 81-91 ms for the 816-token prefill of the `bench` size.)
    kt = kh.transpose(0, 1, 3, 2)  # [B,K,H,T]
    outs = []
    for a in range(0, t, block):
        e = min(a + block, t)
        mask = (jnp.arange(e)[None, :] <= jnp.arange(a, e)[:, None])[None] & key_mask[:, None, :e]
        blocks = [
            (kt[..., j : j + block], "BKHS", vh[:, :, j : j + block], "BKSH", mask[:, :, j : j + block])
            for j in range(0, e, block)
        ]
        empty = ~jnp.any(mask, axis=-1)
        if prefix is not None:
            blocks.insert(0, (pk, "BSKH", pv, "BSKH", pm[:, None, :]))
            empty &= ~jnp.any(pm, axis=-1, keepdims=True)
        o = _attend_blocks(qh[:, :, :, a:e], blocks, scale)
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
        return self.project_q(x, cos, sin), *self.project_kv(x, cos, sin)

    def project_q(self, x, cos, sin):
        q = jnp.einsum("BTD,DNH->BTNH", x, self.q_proj[...].astype(as_dtype(self.dtype)))
        return apply_rope(q, cos, sin)

    def project_kv(self, x, cos, sin):
        dt = as_dtype(self.dtype)
        k = jnp.einsum("BTD,DKH->BTKH", x, self.k_proj[...].astype(dt))
        v = jnp.einsum("BTD,DKH->BTKH", x, self.v_proj[...].astype(dt))
        return apply_rope(k, cos, sin), v

    def output(self, o):
        """o `[B,T,N,H]` → `[B,T,D]`, contracting N·H as one axis (then the `[N,H,D]` weight is read in
        place; contracting N and H separately made XLA:CPU transpose it on every call)."""
        w = self.o_proj[...].astype(as_dtype(self.dtype))
        b, t, n, h = o.shape
        return jnp.einsum("BTF,FD->BTD", o.reshape(b, t, n * h), w.reshape(n * h, w.shape[-1]))


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

    def last_position(self, x, cos, sin, key_mask, scale: float):
        """The layer's output at the last position only `[B,1,D]`, and the keys/values `[B,T,K,H]` of
        every position (what a prefill's last layer has to produce: queries, attention, output
        projection and MLP run for one position instead of T). The last query sees every valid key
        (`key_mask` `[B,T]`), as it does under the causal mask."""
        h = self.input_layernorm(x)
        k, v = self.self_attn.project_kv(h, cos, sin)
        q = self.self_attn.project_q(h[:, -1:], cos[:, -1:], sin[:, -1:])
        y = x[:, -1:] + self.self_attn.output(attention(q, k, v, key_mask[:, None, :], scale))
        return y + self.mlp(self.post_attention_layernorm(y)), (k, v)


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


@struct.dataclass
class LlamaOutput:
    """What an LLM entry point returns (fields it does not produce are None)."""

    hidden: jax.Array  # [B,T,D] after the final norm ([B,1,D]: the last position, from `prefill`)
    k: jax.Array | None = None  # [L,B,T,K,H] keys of the inputs (`prefill`), to build a cache
    v: jax.Array | None = None
    layers: jax.Array | None = (
        None  # [L,B,T,D] every layer's output (`hidden_states`), or [B,T,D] one layer's (`capture`)
    )


class LlamaModel(nnx.Module):
    """Entry points: `forward` (causal over the inputs), `prefill` (last position + every K/V),
    `extend` (inputs after a read-only cached prefix), `capture` (also one layer's output),
    `hidden_states` (every layer's output), `decode` (one token per row from a `DecodeCache`)."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=cfg.param_dtype, rngs=rngs)
        self.layers = make_stack(lambda r: LlamaDecoderLayer(cfg, rngs=r), cfg.num_hidden_layers, rngs)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=cfg.param_dtype)

    def forward(self, inputs_embeds, positions, attention_mask=None) -> LlamaOutput:
        """Causal self-attention over the T inputs (training, full recompute): inputs_embeds `[B,T,D]`,
        positions `[B,T]` int (RoPE), attention_mask `[B,T]` (1 = visible key) → hidden `[B,T,D]`."""
        return LlamaOutput(hidden=self._run(inputs_embeds, positions, attention_mask)[0])

    def prefill(self, inputs_embeds, positions, attention_mask=None) -> LlamaOutput:
        """A prompt run that only needs the last position's output and every position's keys/values:
        hidden `[B,1,D]`, k/v `[L,B,T,K,H]`. The last layer runs its queries, attention and MLP for
        the last position alone (~1/L of the FLOPs saved)."""
        hidden, (k, v), _ = self._run(inputs_embeds, positions, attention_mask, return_kv=True, last_only=True)
        return LlamaOutput(hidden=hidden, k=k, v=v)

    def extend(self, inputs_embeds, positions, prefix: KVCache, attention_mask=None, *, capture_layer=None):
        """The inputs attend to a read-only cached `prefix` plus causally among themselves (the ODE
        steps of image generation); the prefix is not modified. With `capture_layer=k` also the
        k-th layer's output `[B,T,D]` in `layers`."""
        hidden, _, captured = self._run(
            inputs_embeds, positions, attention_mask, prefix=prefix, capture_layer=capture_layer
        )
        return LlamaOutput(hidden=hidden, layers=captured)

    def capture(self, inputs_embeds, positions, attention_mask, layer: int) -> LlamaOutput:
        """`forward` that also returns the output of layer `layer` (1 … L, before the final norm:
        transformers' `hidden_states[layer]`) in `layers` `[B,T,D]` (REPA)."""
        hidden, _, captured = self._run(inputs_embeds, positions, attention_mask, capture_layer=layer)
        return LlamaOutput(hidden=hidden, layers=captured)

    def hidden_states(self, inputs_embeds, positions, attention_mask=None) -> LlamaOutput:
        """`forward` that also returns every layer's output `[L,B,T,D]` in `layers`."""
        hidden, _, per_layer = self._run(inputs_embeds, positions, attention_mask, collect_hidden=True)
        return LlamaOutput(hidden=hidden, layers=per_layer)

    def _run(
        self,
        inputs_embeds: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        prefix: KVCache | None = None,
        return_kv: bool = False,
        collect_hidden: bool = False,
        capture_layer: int | None = None,
        last_only: bool = False,
    ):
        """The one layer loop behind the entry points above.

        inputs_embeds `[B,T,D]`, positions `[B,T]` int (RoPE), attention_mask `[B,T]` (1 = visible key).
        Two ways to attend (token-by-token decoding is `decode`):
          * default: causal self-attention over the T inputs (prefill, training, full recompute);
            `return_kv=True` also returns their keys/values `[L,B,T,K,H]` (to build a cache);
          * `prefix=`: the inputs attend to a read-only cached prefix plus causally among themselves;
            the prefix is not modified (the ODE steps of image generation).
        Returns `(hidden [B,T,D] after the final norm, (k, v) | None, per-layer outputs
        [L,B,T,D] | None)`; with `capture_layer=k` the third item is instead the output of the k-th
        layer `[B,T,D]` (k = 1 … L, before the final norm: transformers' `hidden_states[k]`).

        `last_only=True` (a prefill that only needs the last position's output and every position's
        keys/values) returns hidden `[B,1,D]` of the last position: the last layer then runs its
        queries, attention and MLP for that position alone (~1/L of the prefill's FLOPs saved).
        """
        cfg = self.cfg
        dt = as_dtype(cfg.dtype)
        b, t, _ = inputs_embeds.shape
        x = shard(inputs_embeds.astype(dt), ("batch", "seq", "embed"))
        key_mask = jnp.ones((b, t), jnp.bool_) if attention_mask is None else attention_mask.astype(jnp.bool_)
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        scale = cfg.head_dim**-0.5
        graphdef, layer_state = nnx.split(self.layers)

        def body(carry, xs):
            x, captured = carry
            state, pre, index = xs

            def attend(q, k, v):
                pfx = None if pre is None else (pre[0], pre[1], prefix.mask)
                o = causal_attention(q, k, v, key_mask, scale, cfg.attn_block, pfx)
                return o, ((k, v) if return_kv else None)

            layer = nnx.merge(graphdef, gather_layer(state))
            if last_only:

                def last(x):
                    y, kv = layer.last_position(x, cos, sin, key_mask, scale)
                    return x.at[:, -1:].set(y), (kv if return_kv else None)

                x, kv = jax.lax.cond(index == cfg.num_hidden_layers - 1, last, lambda x: layer(x, cos, sin, attend), x)
            else:
                x, kv = layer(x, cos, sin, attend)
            if capture_layer is not None:
                captured = jnp.where(index == capture_layer - 1, x, captured)
            return (x, captured), (kv, x if collect_hidden else None)

        if last_only and (prefix is not None or collect_hidden or capture_layer is not None):
            raise ValueError("last_only is for a plain prefill: not with prefix, collect_hidden or capture_layer")
        if capture_layer is not None and not 1 <= capture_layer <= cfg.num_hidden_layers:
            raise ValueError(f"capture_layer must be in 1..{cfg.num_hidden_layers}, got {capture_layer}")
        pre = None if prefix is None else (prefix.k, prefix.v)
        captured = jnp.zeros_like(x) if capture_layer is not None else None
        index = jnp.arange(cfg.num_hidden_layers)
        (x, captured), (extra, per_layer) = jax.lax.scan(
            maybe_remat(body, cfg.remat), (x, captured), (layer_state, pre, index), unroll=not cfg.scan_layers
        )
        if capture_layer is not None:
            per_layer = captured
        return self.norm(x[:, -1:] if last_only else x), extra, per_layer

    def layer_modules(self) -> list[LlamaDecoderLayer]:
        """The stacked layers as L separate modules. Call it once, outside a token loop: inside `jit`
        it slices every stacked weight once (XLA materialises the slices: a second copy of the layer
        weights while the loop runs), and the loop then reads each slice in place (a scan over the
        stack inside the loop makes XLA:CPU copy every layer's slice on every token; see
        `decode_streamed` for the memory-lean alternative)."""
        graphdef, state = nnx.split(self.layers)
        return [
            nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(self.cfg.num_hidden_layers)
        ]

    def decode(
        self, layers: list[LlamaDecoderLayer], inputs_embeds: jax.Array, positions: jax.Array, cache: DecodeCache
    ) -> tuple[jax.Array, DecodeCache]:
        """One new token per row: inputs_embeds `[B,1,D]`, positions `[B,1]`, `layers` from
        `layer_modules()`. It attends to the valid prompt keys, the `cache.count` tokens generated
        so far and itself; returns `(hidden [B,1,D] after the final norm, cache with its K/V added)`."""
        x, cos, sin, attend = self._decode_setup(inputs_embeds, positions, cache)
        ks, vs = [], []
        for i, layer in enumerate(layers):
            x, (k2, v2) = layer(
                x, cos, sin, functools.partial(attend, cache.prompt_k[i], cache.prompt_v[i], cache.k[i], cache.v[i])
            )
            ks.append(k2)
            vs.append(v2)
        return self.norm(x), cache.replace(k=tuple(ks), v=tuple(vs), count=cache.count + 1)

    def decode_streamed(
        self, inputs_embeds: jax.Array, positions: jax.Array, cache: DecodeCache
    ) -> tuple[jax.Array, DecodeCache]:
        """`decode` that reads each layer's weights from their stack inside the step (a scan over the
        layers) instead of holding them sliced: with a `cache.stacked()` cache (`[L, ...]` arrays).

        For weights a backend cannot multiply in their own dtype (bfloat16 on XLA:CPU): each step
        widens one layer at a time, where `layer_modules()` would keep a float32 copy of every layer
        for the whole loop (2× the weights' bytes)."""
        x, cos, sin, attend = self._decode_setup(inputs_embeds, positions, cache)
        graphdef, state = nnx.split(self.layers)

        def body(x, xs):
            st, pk, pv, k, v = xs
            return nnx.merge(graphdef, st)(x, cos, sin, functools.partial(attend, pk, pv, k, v))

        x, (k, v) = jax.lax.scan(body, x, (state, cache.prompt_k, cache.prompt_v, cache.k, cache.v))
        return self.norm(x), cache.replace(k=k, v=v, count=cache.count + 1)

    def _decode_setup(self, inputs_embeds, positions, cache: DecodeCache):
        """The input, RoPE tables and one layer's attention for a decode step: `attend(prompt_k,
        prompt_v, k, v, q, k_new, v_new)` with that layer's cache buffers first."""
        cfg = self.cfg
        x = shard(inputs_embeds.astype(as_dtype(cfg.dtype)), ("batch", "seq", "embed"))
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        b, n = x.shape[0], cache.count
        upto = jnp.broadcast_to(jnp.arange(cache.slots)[None, None, :] <= n, (b, 1, cache.slots))  # + this token

        def attend(prompt_k, prompt_v, k_buf, v_buf, q, k, v):
            # Write this token's key/value into its slot first and attend over the updated buffers:
            # reading the old buffer and then updating it made XLA copy every layer's whole cache on
            # every step (8 × 9.4 MB at the bench size).
            qh, kh, vh = _heads_major(q, k, v)
            k2 = jax.lax.dynamic_update_slice(k_buf, kh.transpose(0, 1, 3, 2).astype(k_buf.dtype), (0, 0, 0, n))
            v2 = jax.lax.dynamic_update_slice(v_buf, vh.astype(v_buf.dtype), (0, 0, n, 0))
            blocks = [
                (prompt_k, "BKHS", prompt_v, "BKSH", cache.prompt_mask[:, None, :]),
                (k2, "BKHS", v2, "BKSH", upto),
            ]
            return _tokens_major(_attend_blocks(qh, blocks, cfg.head_dim**-0.5)), (k2, v2)

        return x, cos, sin, attend


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

    def __call__(self, input_ids, positions=None, attention_mask=None):
        """Full causal forward: ids `[B,T]` → float32 logits `[B,T,V]`."""
        if positions is None:
            positions = positions_from_mask(attention_mask, input_ids.shape)
        return self.logits(self.model.forward(self.embed(input_ids), positions, attention_mask).hidden)


def positions_from_mask(attention_mask: jax.Array | None, shape: tuple[int, int]) -> jax.Array:
    """transformers' `generate` rule: `cumsum(mask) - 1`, pads set to 1; arange without a mask."""
    if attention_mask is None:
        return jnp.broadcast_to(jnp.arange(shape[1], dtype=jnp.int32), shape)
    m = attention_mask.astype(jnp.int32)
    pos = jnp.cumsum(m, axis=-1) - 1
    return jnp.where(m == 0, 1, pos).astype(jnp.int32)
