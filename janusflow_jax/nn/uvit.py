"""ShallowUViT generation encoder and decoder (ConvNeXt blocks with RMSNorm, GRN and timestep FiLM).

Channels-last throughout: latents `[B, H, W, 4]`, feature maps `[B, h, w, C]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow_jax.config import UViTDecoderConfig, UViTEncoderConfig
from janusflow_jax.nn.layers import (
    Conv2d,
    Linear,
    RMSNorm,
    as_dtype,
    gelu_exact,
    param,
    timestep_features,
    zeros_init,
)


class GlobalResponseNorm(nnx.Module):
    """ConvNeXt-V2 GRN: `gx = ‖x‖₂ over (H, W)`, `nx = gx / (mean_C gx + 1e-6)`, `β + (γ·nx + 1)·x`."""

    def __init__(self, dim: int, *, param_dtype: str):
        self.weight = param(None, zeros_init, (dim,), param_dtype, ("mlp",))
        self.bias = param(None, zeros_init, (dim,), param_dtype, ("mlp",))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        gx = jnp.sqrt(jnp.sum(x32 * x32, axis=(1, 2), keepdims=True))
        nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + 1e-6)
        w, b = self.weight[...].astype(jnp.float32), self.bias[...].astype(jnp.float32)
        return (b + (w * nx + 1.0) * x32).astype(x.dtype)


class ConvNextBlock(nnx.Module):
    """depthwise 7×7 → RMSNorm → Linear(C→4C) → GELU(erf) → GRN → Linear(4C→C) → + residual → FiLM."""

    def __init__(
        self,
        channels: int,
        hidden_size: int,
        *,
        eps: float,
        use_bias: bool,
        dtype: str,
        param_dtype: str,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.depthwise = Conv2d(
            channels, channels, 7, padding=3, groups=channels, use_bias=use_bias, names=(None, "conv_out"), **kw
        )
        self.norm = RMSNorm(channels, eps=eps, names=("conv_out",), param_dtype=param_dtype)
        self.channelwise_linear_1 = Linear(channels, 4 * channels, use_bias=use_bias, names=("conv_in", "mlp"), **kw)
        self.channelwise_norm = GlobalResponseNorm(4 * channels, param_dtype=param_dtype)
        self.channelwise_linear_2 = Linear(4 * channels, channels, use_bias=use_bias, names=("mlp", "conv_in"), **kw)
        self.cond_embeds_mapper = Linear(
            hidden_size, 2 * channels, use_bias=use_bias, names=("embed", "conv_out"), **kw
        )

    def __call__(self, x, t_emb):
        h = self.depthwise(x)
        h = self.norm(h)
        h = self.channelwise_linear_2(self.channelwise_norm(gelu_exact(self.channelwise_linear_1(h))))
        x = x + h
        scale, shift = jnp.split(self.cond_embeds_mapper(jax.nn.silu(t_emb)), 2, axis=-1)
        return shift[:, None, None, :] + x * (1.0 + scale[:, None, None, :])


class UVitBlock(nnx.Module):
    def __init__(self, channels: int, num_blocks: int, hidden_size: int, *, eps, use_bias, dtype, param_dtype, rngs):
        self.res_blocks = nnx.List(
            [
                ConvNextBlock(
                    channels, hidden_size, eps=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs
                )
                for _ in range(num_blocks)
            ]
        )

    def __call__(self, x, t_emb):
        for blk in self.res_blocks:
            x = blk(x, t_emb)
        return x


class TimestepEmbedding(nnx.Module):
    """diffusers TimestepEmbedding: linear_1 → SiLU → linear_2."""

    def __init__(self, in_dim: int, out_dim: int, *, use_bias: bool, dtype: str, param_dtype: str, rngs: nnx.Rngs):
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_1 = Linear(in_dim, out_dim, names=("conv_out", "embed"), **kw)
        self.linear_2 = Linear(out_dim, out_dim, names=("mlp", "embed"), **kw)

    def __call__(self, x):
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class ShallowUViTEncoder(nnx.Module):
    def __init__(self, cfg: UViTEncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.time_embed = TimestepEmbedding(cfg.channels, cfg.hidden_size, use_bias=cfg.use_bias, **kw)
        self.in_conv = Conv2d(
            cfg.input_channels, cfg.channels, cfg.kernel_size, stride=cfg.stride, padding=cfg.padding, **kw
        )
        self.mid_block = (
            UVitBlock(
                cfg.channels, cfg.layers_in_middle, cfg.hidden_size, eps=cfg.norm_eps, use_bias=cfg.use_bias, **kw
            )
            if cfg.use_mid_block
            else None
        )

    def time_proj(self, t1000: jax.Array) -> jax.Array:
        return timestep_features(t1000, self.cfg.channels)

    def __call__(self, z: jax.Array, t1000: jax.Array):
        """z `[B,H,W,Cin]`, t1000 `[B]` (flow time ×1000) → `(x_emb [B,h,w,C], t_emb [B,D], skip)`."""
        dt = as_dtype(self.cfg.dtype)
        t_emb = self.time_embed(self.time_proj(t1000).astype(dt))
        x = self.in_conv(z.astype(dt))
        if self.mid_block is not None:
            x = self.mid_block(x, t_emb)
        return x, t_emb, x


class Unpatchify(nnx.Module):
    """RMSNorm → 1×1 conv (C → out·p·p) → pixel shuffle in torch's channel order."""

    def __init__(self, in_channels: int, out_channels: int, patch: int, *, eps, use_bias, dtype, param_dtype, rngs):
        self.patch, self.out_channels = patch, out_channels
        self.norm = RMSNorm(in_channels, eps=eps, names=("conv_in",), param_dtype=param_dtype)
        self.unpatch_conv = Conv2d(
            in_channels,
            out_channels * patch * patch,
            1,
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x):
        y = self.unpatch_conv(self.norm(x))
        b, h, w, _ = y.shape
        p = self.patch
        # torch PixelShuffle: input channel c·p² + i·p + j → output channel c at pixel (p·y + i, p·x + j)
        y = y.reshape(b, h, w, self.out_channels, p, p).transpose(0, 1, 4, 2, 5, 3)
        return y.reshape(b, h * p, w * p, self.out_channels)


class ShallowUViTDecoder(nnx.Module):
    def __init__(self, cfg: UViTDecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(eps=cfg.norm_eps, use_bias=cfg.use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.input_norm = RMSNorm(cfg.in_channels, eps=cfg.norm_eps, names=("conv_in",), param_dtype=cfg.param_dtype)
        self.mid_block = (
            UVitBlock(cfg.mid_channels, cfg.layers_in_middle, cfg.hidden_size, **kw) if cfg.use_mid_block else None
        )
        convs = []
        for rank in range(cfg.upsamples):
            cin = cfg.mid_channels if rank == 0 else cfg.channels
            cout = cfg.out_channels if rank == cfg.upsamples - 1 else cfg.channels
            convs.append(Unpatchify(cin, cout, 2, **kw))
        self.out_convs = nnx.List(convs)

    def __call__(self, x: jax.Array, skip: jax.Array, t_emb: jax.Array) -> jax.Array:
        """x `[B,h,w,Cin]` (LLM side), skip `[B,h,w,C]` (encoder output), t_emb `[B,D]` → `[B,H,W,out]`."""
        x = jnp.concatenate(
            [self.input_norm(x.astype(as_dtype(self.cfg.dtype))), skip.astype(as_dtype(self.cfg.dtype))], axis=-1
        )
        if self.mid_block is not None:
            x = self.mid_block(x, t_emb)
        for conv in self.out_convs:
            x = conv(x)
        return x
