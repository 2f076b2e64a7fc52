"""Analytic FLOP counts (multiply-add = 2 FLOPs) of JanusFlow's forward passes, and MFU.

Only matrix multiplies and convolutions are counted (norms, activations and softmax are
bandwidth, not FLOPs). Attention counts QKᵀ and PV for the (query, key) pairs actually visible:
causal pairs within a new block, plus every cached key before it.
"""

from __future__ import annotations

import time

from janusflow_jax.config import JanusFlowConfig, LlamaConfig, SiglipConfig, VaeConfig


def _attn_pairs(new: int, cached: int, causal: bool = True) -> int:
    within = new * (new + 1) // 2 if causal else new * new
    return within + new * cached


def llm_flops(cfg: LlamaConfig, rows: int, new: int, cached: int = 0, *, lm_head_tokens: int = 0) -> float:
    """Forward FLOPs of `rows` sequences each feeding `new` tokens after `cached` cached ones."""
    d, f, n, k, h = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    )
    per_token = d * (n * h + 2 * k * h) + n * h * d + 3 * d * f
    dense = 2 * rows * new * per_token * cfg.num_hidden_layers
    attn = 2 * 2 * rows * _attn_pairs(new, cached) * n * h * cfg.num_hidden_layers
    head = 2 * rows * lm_head_tokens * d * cfg.vocab_size
    return float(dense + attn + head)


def siglip_flops(cfg: SiglipConfig, images: int) -> float:
    p, w = cfg.num_patches, cfg.width
    patch = 2 * p * (cfg.patch_size**2 * 3) * w
    block = 2 * p * (4 * w * w + 2 * w * cfg.mlp_dim) + 2 * 2 * p * p * w
    return float(images * (patch + cfg.depth * block))


def _convnext_flops(c: int, hidden: int, hw: int) -> int:
    return 2 * hw * (49 * c + 8 * c * c) + 2 * hidden * 2 * c


def gen_step_flops(cfg: JanusFlowConfig, rows: int, latent_side: int, prompt_len: int, *, recompute: bool) -> float:
    """One velocity evaluation for `rows` CFG rows: UViT encoder, LLM, aligners, UViT decoder."""
    g = cfg.grid_for_latent(latent_side)
    n_img = g * g
    e, dd, d = cfg.gen_enc, cfg.gen_dec, cfg.llm.hidden_size
    enc = 2 * n_img * e.kernel_size**2 * e.input_channels * e.channels + 2 * (e.channels * d + d * d)
    enc += e.layers_in_middle * _convnext_flops(e.channels, d, n_img) if e.use_mid_block else 0
    aligners = 2 * n_img * (e.channels * d + d * dd.in_channels)
    c2 = dd.mid_channels
    dec = dd.layers_in_middle * _convnext_flops(c2, d, n_img) if dd.use_mid_block else 0
    dec += 2 * n_img * c2 * dd.out_channels * 4  # 1×1 unpatchify conv (first stage)
    if recompute:
        llm = llm_flops(cfg.llm, rows, prompt_len + 1 + n_img)
    else:
        llm = llm_flops(cfg.llm, rows, 1 + n_img, cached=prompt_len)
    return float(rows * (enc + aligners + dec) + llm)


def _conv(hw: int, cin: int, cout: int, k: int) -> int:
    return 2 * hw * k * k * cin * cout


def _resnet(hw: int, cin: int, cout: int) -> int:
    return _conv(hw, cin, cout, 3) + _conv(hw, cout, cout, 3) + (_conv(hw, cin, cout, 1) if cin != cout else 0)


def vae_decode_flops(cfg: VaeConfig, latent_side: int, images: int) -> float:
    ch = list(cfg.block_out_channels)
    side = latent_side
    hw = side * side
    top = ch[-1]
    total = _conv(hw, cfg.latent_channels, cfg.latent_channels, 1) if cfg.use_post_quant_conv else 0
    total += _conv(hw, cfg.latent_channels, top, 3)
    total += 2 * _resnet(hw, top, top)
    if cfg.mid_block_add_attention:
        total += 2 * hw * 4 * top * top + 2 * 2 * hw * hw * top
    cin = top
    for i, cout in enumerate(reversed(ch)):
        for j in range(cfg.layers_per_block + 1):
            total += _resnet(hw, cin if j == 0 else cout, cout)
        cin = cout
        if i < len(ch) - 1:
            side *= 2
            hw = side * side
            total += _conv(hw, cout, cout, 3)
    total += _conv(hw, ch[0], cfg.out_channels, 3)
    return float(images * total)


def mfu(flops: float, seconds: float, peak_flops_per_s: float, devices: int = 1) -> float:
    return flops / seconds / (peak_flops_per_s * devices)


def matmul_peak(dtype: str, n: int | None = None, repeats: int = 5) -> float:
    """Best FLOP/s of a jitted square matmul chain on the default device."""
    import jax
    import jax.numpy as jnp

    n = n or (1024 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda x: x @ x @ x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 3 * 2 * n**3 / best
