"""SigLIP ViT understanding encoder, as the official `siglip_vit.VisionTransformer` runs it.

Patch conv (bias) → + learned position embedding (no class token, no pre-norm; from scratch it starts
as the fixed 2-D sin-cos table, `sincos2d_init`) → pre-LN blocks
(fused qkv with bias, exact-erf GELU MLP) → final LayerNorm. The attention-pool head is never run.
Images are channels-last `[B, H, W, 3]`, already preprocessed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow_jax.config import SiglipConfig
from janusflow_jax.nn.layers import (
    Conv2d,
    LayerNorm,
    Linear,
    as_dtype,
    fan_in_init,
    gelu_exact,
    param,
    zeros_init,
)
from janusflow_jax.nn.llama import make_stack, maybe_remat
from janusflow_jax.sharding import gather_layer, shard


class SiglipAttention(nnx.Module):
    def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
        w, n = cfg.width, cfg.num_heads
        h = w // n
        pd = cfg.param_dtype
        self.qkv = param(rngs, fan_in_init(w), (w, 3, n, h), pd, ("embed", None, "heads", "head_dim"))
        self.qkv_bias = param(rngs, zeros_init, (3, n, h), pd, (None, "heads", "head_dim"))
        self.proj = param(rngs, fan_in_init(w), (n, h, w), pd, ("heads", "head_dim", "embed"))
        self.proj_bias = param(rngs, zeros_init, (w,), pd, ("embed",))
        self.scale = h**-0.5
        self.dtype = cfg.dtype

    def __call__(self, x):
        dt = as_dtype(self.dtype)
        qkv = jnp.einsum("BTD,DXNH->XBTNH", x, self.qkv[...].astype(dt)) + self.qkv_bias[...].astype(dt)[:, None, None]
        q, k, v = qkv[0], qkv[1], qkv[2]
        s = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32) * self.scale
        p = jax.nn.softmax(s, axis=-1).astype(dt)
        o = jnp.einsum("BNTS,BSNH->BTNH", p, v)
        return jnp.einsum("BTNH,NHD->BTD", o, self.proj[...].astype(dt)) + self.proj_bias[...].astype(dt)


class SiglipMLP(nnx.Module):
    def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.fc1 = Linear(cfg.width, cfg.mlp_dim, names=("embed", "mlp"), **kw)
        self.fc2 = Linear(cfg.mlp_dim, cfg.width, names=("mlp", "embed"), **kw)

    def __call__(self, x):
        return self.fc2(gelu_exact(self.fc1(x)))


class SiglipBlock(nnx.Module):
    def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
        self.norm1 = LayerNorm(cfg.width, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)
        self.attn = SiglipAttention(cfg, rngs=rngs)
        self.norm2 = LayerNorm(cfg.width, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)
        self.mlp = SiglipMLP(cfg, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return shard(x, ("batch", "seq", "embed"))


def sincos2d_init(grid: int, temperature: float = 10_000.0):
    """Init of a from-scratch position table `[grid², width]` (row-major patches): the fixed 2-D sin-cos
    embedding of big_vision's plain ViTs — a quarter of the channels each sin(x·ω), cos(x·ω), sin(y·ω),
    cos(y·ω) for geometric frequencies ω from 1 down to 1/temperature, any leftover channels 0 — still a
    trained parameter. Why not the usual N(0, 0.02): next to a patch embedding of unit scale that leaves
    64 white patches with features 0.99999 alike (cosine) after the tower, and a from-scratch JanusFlow
    on the GenEval world then answered every "is the A left of the B?" with "yes" (README). The key is
    unused; `param` still draws it, so every other parameter's init is unchanged."""

    def init(key, shape, dtype):
        del key
        n, width = shape
        if n != grid * grid:
            raise ValueError(f"position table of {n} rows for a {grid}x{grid} patch grid")
        q = width // 4
        omega = 1.0 / temperature ** (jnp.arange(q, dtype=jnp.float32) / max(q - 1, 1))
        y, x = jnp.divmod(jnp.arange(n, dtype=jnp.float32), grid)
        ax, ay = x[:, None] * omega[None], y[:, None] * omega[None]
        table = jnp.concatenate([jnp.sin(ax), jnp.cos(ax), jnp.sin(ay), jnp.cos(ay)], axis=1)
        return jnp.pad(table, ((0, 0), (0, width - 4 * q))).astype(dtype)

    return init


class PatchEmbed(nnx.Module):
    def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
        self.proj = Conv2d(
            3, cfg.width, cfg.patch_size, stride=cfg.patch_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs
        )

    def __call__(self, x):
        y = self.proj(x)
        b, gh, gw, w = y.shape
        return y.reshape(b, gh * gw, w)  # row-major patches, as torch's flatten(2).transpose(1, 2)


class VisionTransformer(nnx.Module):
    def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg, rngs=rngs)
        self.pos_embed = param(
            rngs, sincos2d_init(cfg.grid), (cfg.num_patches, cfg.width), cfg.param_dtype, (None, "embed")
        )
        self.blocks = make_stack(lambda r: SiglipBlock(cfg, rngs=r), cfg.depth, rngs)
        self.norm = LayerNorm(cfg.width, eps=cfg.layer_norm_eps, param_dtype=cfg.param_dtype)

    def __call__(self, pixels: jax.Array, *, collect: bool = False):
        """pixels `[B, H, W, 3]` → features `[B, P, W]` (after the final norm).

        With `collect=True` also returns `{"patch_embed": [B,P,W], "blocks": [depth,B,P,W]}`.
        """
        if pixels.shape[1:3] != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(
                f"SigLIP expects {self.cfg.image_size}x{self.cfg.image_size} images, got {pixels.shape[1:3]}"
            )
        patches = self.patch_embed(pixels)
        x = patches + self.pos_embed[...].astype(patches.dtype)[None]
        graphdef, state = nnx.split(self.blocks)

        def body(x, s):
            x = nnx.merge(graphdef, gather_layer(s))(x)
            return x, x if collect else None

        x, per_block = jax.lax.scan(maybe_remat(body, self.cfg.remat), x, state, unroll=not self.cfg.scan_layers)
        out = self.norm(x)
        if collect:
            return out, {"patch_embed": patches, "blocks": per_block}
        return out


class CLIPVisionTower(nnx.Module):
    """Holds `vision_tower` (the official attribute name); applies the optional in-model Normalize."""

    def __init__(self, cfg: SiglipConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision_tower = VisionTransformer(cfg, rngs=rngs)

    def __call__(self, pixels: jax.Array, *, collect: bool = False):
        pixels = pixels.astype(as_dtype(self.cfg.dtype))
        if self.cfg.pixel_mean is not None:
            mean = jnp.asarray(self.cfg.pixel_mean, pixels.dtype)
            std = jnp.asarray(self.cfg.pixel_std, pixels.dtype)
            pixels = (pixels - mean) / std
        return self.vision_tower(pixels, collect=collect)
