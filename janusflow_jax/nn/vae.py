"""diffusers `AutoencoderKL` (SDXL-VAE structure) in Flax NNX, channels-last.

Attribute names mirror diffusers so the weight table maps names one to one:
encoder.{conv_in, down_blocks[i].{resnets[j], downsamplers[0].conv}, mid_block, conv_norm_out, conv_out},
quant_conv, post_quant_conv, decoder.{conv_in, mid_block, up_blocks[i].{resnets[j], upsamplers[0].conv},
conv_norm_out, conv_out}. GroupNorm eps 1e-6, SiLU, single-head mid-block attention with residual.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow_jax.config import VaeConfig
from janusflow_jax.nn.layers import Conv2d, Linear, as_dtype, ones_init, param, zeros_init

EPS = 1e-6


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm on `[B, H, W, C]` (float32 statistics, biased variance)."""

    def __init__(self, groups: int, channels: int, *, param_dtype: str):
        self.groups = groups
        self.weight = param(None, ones_init, (channels,), param_dtype, ("norm",))
        self.bias = param(None, zeros_init, (channels,), param_dtype, ("norm",))

    def __call__(self, x):
        b, h, w, c = x.shape
        g = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
        mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + EPS)).reshape(b, h, w, c)
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def _conv(cin, cout, k, cfg: VaeConfig, rngs, **kw):
    return Conv2d(cin, cout, k, padding=k // 2, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs, **kw)


class ResnetBlock2D(nnx.Module):
    def __init__(self, cin: int, cout: int, cfg: VaeConfig, *, rngs: nnx.Rngs):
        g, pd = cfg.norm_num_groups, cfg.param_dtype
        self.norm1 = GroupNorm(g, cin, param_dtype=pd)
        self.conv1 = _conv(cin, cout, 3, cfg, rngs)
        self.norm2 = GroupNorm(g, cout, param_dtype=pd)
        self.conv2 = _conv(cout, cout, 3, cfg, rngs)
        self.conv_shortcut = _conv(cin, cout, 1, cfg, rngs) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nnx.Module):
    """Single-head self-attention over the H·W positions (diffusers `Attention` in the mid block)."""

    def __init__(self, channels: int, cfg: VaeConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.group_norm = GroupNorm(cfg.norm_num_groups, channels, param_dtype=cfg.param_dtype)
        self.to_q = Linear(channels, channels, names=("conv_in", "conv_out"), **kw)
        self.to_k = Linear(channels, channels, names=("conv_in", "conv_out"), **kw)
        self.to_v = Linear(channels, channels, names=("conv_in", "conv_out"), **kw)
        self.to_out = nnx.List([Linear(channels, channels, names=("conv_out", "conv_in"), **kw)])
        self.scale = channels**-0.5

    def __call__(self, x):
        b, h, w, c = x.shape
        t = self.group_norm(x).reshape(b, h * w, c)
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        s = jnp.einsum("BTC,BSC->BTS", q, k, preferred_element_type=jnp.float32) * self.scale
        o = jnp.einsum("BTS,BSC->BTC", jax.nn.softmax(s, axis=-1).astype(v.dtype), v)
        return x + self.to_out[0](o).reshape(b, h, w, c)


class MidBlock(nnx.Module):
    def __init__(self, channels: int, cfg: VaeConfig, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, cfg, rngs=rngs) for _ in range(2)])
        self.attentions = nnx.List([Attention(channels, cfg, rngs=rngs)]) if cfg.mid_block_add_attention else None

    def __call__(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nnx.Module):
    """Pad (0, 1, 0, 1) then 3×3 stride-2 conv without padding (diffusers `Downsample2D`, padding=0)."""

    def __init__(self, channels: int, cfg: VaeConfig, *, rngs: nnx.Rngs):
        self.conv = Conv2d(
            channels, channels, 3, stride=2, padding=0, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs
        )

    def __call__(self, x):
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    """Nearest ×2 then 3×3 conv (diffusers `Upsample2D`, use_conv=True)."""

    def __init__(self, channels: int, cfg: VaeConfig, *, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, cfg, rngs)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class _Block(nnx.Module):
    """A DownEncoderBlock2D / UpDecoderBlock2D: resnets, then an optional resampler."""

    def __init__(self, cin: int, cout: int, layers: int, resample, cfg: VaeConfig, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResnetBlock2D(cin if j == 0 else cout, cout, cfg, rngs=rngs) for j in range(layers)])
        if resample == "down":
            self.downsamplers = nnx.List([Downsample(cout, cfg, rngs=rngs)])
        elif resample == "up":
            self.upsamplers = nnx.List([Upsample(cout, cfg, rngs=rngs)])

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        for s in list(getattr(self, "downsamplers", [])) + list(getattr(self, "upsamplers", [])):
            x = s(x)
        return x


class Encoder(nnx.Module):
    def __init__(self, cfg: VaeConfig, *, rngs: nnx.Rngs):
        ch = cfg.block_out_channels
        self.conv_in = _conv(cfg.in_channels, ch[0], 3, cfg, rngs)
        blocks, cin = [], ch[0]
        for i, cout in enumerate(ch):
            last = i == len(ch) - 1
            blocks.append(_Block(cin, cout, cfg.layers_per_block, None if last else "down", cfg, rngs=rngs))
            cin = cout
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(ch[-1], cfg, rngs=rngs)
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, ch[-1], param_dtype=cfg.param_dtype)
        self.conv_out = _conv(ch[-1], 2 * cfg.latent_channels, 3, cfg, rngs)

    def __call__(self, x):
        x = self.conv_in(x)
        for blk in self.down_blocks:
            x = blk(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: VaeConfig, *, rngs: nnx.Rngs):
        rev = tuple(reversed(cfg.block_out_channels))
        self.conv_in = _conv(cfg.latent_channels, rev[0], 3, cfg, rngs)
        self.mid_block = MidBlock(rev[0], cfg, rngs=rngs)
        blocks, cin = [], rev[0]
        for i, cout in enumerate(rev):
            last = i == len(rev) - 1
            blocks.append(_Block(cin, cout, cfg.layers_per_block + 1, None if last else "up", cfg, rngs=rngs))
            cin = cout
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = GroupNorm(cfg.norm_num_groups, rev[-1], param_dtype=cfg.param_dtype)
        self.conv_out = _conv(rev[-1], cfg.out_channels, 3, cfg, rngs)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for blk in self.up_blocks:
            x = blk(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    def __init__(self, cfg: VaeConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        lc = cfg.latent_channels
        self.quant_conv = _conv(2 * lc, 2 * lc, 1, cfg, rngs) if cfg.use_quant_conv else None
        self.post_quant_conv = _conv(lc, lc, 1, cfg, rngs) if cfg.use_post_quant_conv else None

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images `[B,H,W,3]` in [-1, 1] → (mean, logvar) `[B,h,w,C]` of the latent distribution (unscaled)."""
        h = self.encoder(x.astype(as_dtype(self.cfg.dtype)))
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """Raw latents `[B,h,w,C]` (already divided by scaling_factor) → images `[B,H,W,3]`."""
        z = z.astype(as_dtype(self.cfg.dtype))
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)
