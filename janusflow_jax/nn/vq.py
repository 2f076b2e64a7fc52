"""LlamaGen "VQ-16" image tokenizer (Janus / Janus-Pro `gen_vision_model`) in Flax NNX, channels-last.

Attribute names mirror the official module tree, so the weight table only maps layouts:
encoder.{conv_in, conv_blocks[i].{res[j], attn[j] (deepest level only), downsample.conv (all but the
deepest)}, mid = [res, attn, res], norm_out, conv_out}, quant_conv, quantize.embedding,
post_quant_conv, decoder.{conv_in, mid, conv_blocks[i] (i = 0 is the DEEPEST level) .{res[j],
attn[j], upsample.conv (all but the last)}, norm_out, conv_out}.

GroupNorm statistics in float32, swish x·sigmoid(x), single-head attention over the h·w positions
(softmax in float32). The attention q/k/v/proj_out 1×1 convs are stored as `Linear` (`[in, out]`);
every other conv, 1×1 ones included, is a `Conv2d` with an HWIO kernel. The codebook lookup (l2
normalisation, distances, argmin) always runs in float32, whatever `cfg.dtype`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow_jax.config import VQConfig
from janusflow_jax.nn.layers import Conv2d, Linear, as_dtype, normal_init, ones_init, param, zeros_init

L2_EPS = 1e-12  # torch.nn.functional.normalize's default eps


def swish(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


def l2_normalize(x: jax.Array) -> jax.Array:
    """`F.normalize(x, p=2, dim=-1)`: x / max(‖x‖, 1e-12), in float32."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, L2_EPS)


def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
    """Index `[...]` int32 of the nearest row of `codebook` `[K, D]` for each vector of `z` `[..., D]`:
    argmin over k of |z|² + |e_k|² − 2 z·e_k (the official expression and order), float32, full
    matmul precision, first index on ties. No normalisation here."""
    z, e = z.astype(jnp.float32), codebook.astype(jnp.float32)
    zz = jnp.sum(z * z, axis=-1, keepdims=True)
    ee = jnp.sum(e * e, axis=-1)
    ze = jnp.einsum("...d,kd->...k", z, e, precision=jax.lax.Precision.HIGHEST)
    return jnp.argmin((zz + ee) - 2.0 * ze, axis=-1).astype(jnp.int32)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm (affine) on `[B, H, W, C]`: float32 statistics, biased variance."""

    def __init__(self, channels: int, cfg: VQConfig):
        self.groups, self.eps = cfg.norm_groups, cfg.norm_eps
        self.weight = param(None, ones_init, (channels,), cfg.param_dtype, ("norm",))
        self.bias = param(None, zeros_init, (channels,), cfg.param_dtype, ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        g = x.astype(jnp.float32).reshape(b, h, w, self.groups, c // self.groups)
        mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, h, w, c)
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def _conv(cin: int, cout: int, k: int, cfg: VQConfig, rngs: nnx.Rngs, *, stride: int = 1, padding=None) -> Conv2d:
    pad = k // 2 if padding is None else padding
    return Conv2d(cin, cout, k, stride=stride, padding=pad, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)


class ResnetBlock(nnx.Module):
    """GN → swish → conv3×3 → GN → swish → conv3×3, plus x (through a 1×1 `nin_shortcut` if cin ≠ cout)."""

    def __init__(self, cin: int, cout: int, cfg: VQConfig, *, rngs: nnx.Rngs):
        self.norm1 = GroupNorm(cin, cfg)
        self.conv1 = _conv(cin, cout, 3, cfg, rngs)
        self.norm2 = GroupNorm(cout, cfg)
        self.conv2 = _conv(cout, cout, 3, cfg, rngs)
        self.nin_shortcut = _conv(cin, cout, 1, cfg, rngs) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nnx.Module):
    """GN → q, k, v → one head over all h·w positions, scale C^-0.5 → proj_out → + x."""

    def __init__(self, channels: int, cfg: VQConfig, *, rngs: nnx.Rngs):
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "rngs": rngs}
        self.norm = GroupNorm(channels, cfg)
        self.q = Linear(channels, channels, names=("conv_in", "conv_out"), **kw)
        self.k = Linear(channels, channels, names=("conv_in", "conv_out"), **kw)
        self.v = Linear(channels, channels, names=("conv_in", "conv_out"), **kw)
        self.proj_out = Linear(channels, channels, names=("conv_out", "conv_in"), **kw)
        self.scale = channels**-0.5

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        t = self.norm(x).reshape(b, h * w, c)
        q, k, v = self.q(t), self.k(t), self.v(t)
        s = jnp.einsum("BTC,BSC->BTS", q, k, preferred_element_type=jnp.float32) * self.scale
        o = jnp.einsum("BTS,BSC->BTC", jax.nn.softmax(s, axis=-1).astype(v.dtype), v)
        return x + self.proj_out(o).reshape(b, h, w, c)


class Downsample(nnx.Module):
    """Zero-pad right and bottom by one, then a 3×3 stride-2 conv without padding."""

    def __init__(self, channels: int, cfg: VQConfig, *, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, cfg, rngs, stride=2, padding=0)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
    """Nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, channels: int, cfg: VQConfig, *, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class ConvBlock(nnx.Module):
    """One resolution level: `res[j]` (each followed by `attn[j]` when `attn` is non-empty), then the
    optional `downsample` (encoder) or `upsample` (decoder)."""

    def __init__(self, cin: int, cout: int, n_res: int, with_attn: bool, resample, cfg, *, rngs: nnx.Rngs):
        self.res = nnx.List([ResnetBlock(cin if j == 0 else cout, cout, cfg, rngs=rngs) for j in range(n_res)])
        self.attn = nnx.List([AttnBlock(cout, cfg, rngs=rngs) for _ in range(n_res)] if with_attn else [])
        if resample == "down":
            self.downsample = Downsample(cout, cfg, rngs=rngs)
        elif resample == "up":
            self.upsample = Upsample(cout, cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for j, res in enumerate(self.res):
            x = res(x)
            if len(self.attn):
                x = self.attn[j](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def _mid(channels: int, cfg: VQConfig, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List(
        [
            ResnetBlock(channels, channels, cfg, rngs=rngs),
            AttnBlock(channels, cfg, rngs=rngs),
            ResnetBlock(channels, channels, cfg, rngs=rngs),
        ]
    )


class Encoder(nnx.Module):
    def __init__(self, cfg: VQConfig, *, rngs: nnx.Rngs):
        mult = tuple(cfg.encoder_ch_mult)
        n = len(mult)
        self.conv_in = _conv(3, cfg.ch, 3, cfg, rngs)
        blocks, cin = [], cfg.ch
        for i, m in enumerate(mult):
            cout, deepest = cfg.ch * m, i == n - 1
            blocks.append(
                ConvBlock(cin, cout, cfg.num_res_blocks, deepest, None if deepest else "down", cfg, rngs=rngs)
            )
            cin = cout
        self.conv_blocks = nnx.List(blocks)
        self.mid = _mid(cin, cfg, rngs)
        self.norm_out = GroupNorm(cin, cfg)
        self.conv_out = _conv(cin, cfg.z_channels, 3, cfg, rngs)

    def __call__(self, x: jax.Array, taps: dict | None = None) -> jax.Array:
        """images `[B,H,W,3]` → `[B,H/f,W/f,z_channels]`; `taps` (a dict) receives "conv_in",
        "level{i}_down" (after each Downsample) and "mid_out"."""
        taps = {} if taps is None else taps
        x = taps["conv_in"] = self.conv_in(x)
        for i, blk in enumerate(self.conv_blocks):
            x = blk(x)
            if hasattr(blk, "downsample"):
                taps[f"level{i}_down"] = x
        for m in self.mid:
            x = m(x)
        taps["mid_out"] = x
        return self.conv_out(swish(self.norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: VQConfig, *, rngs: nnx.Rngs):
        mult = tuple(cfg.decoder_ch_mult)
        n = len(mult)
        cin = cfg.ch * mult[-1]
        self.conv_in = _conv(cfg.z_channels, cin, 3, cfg, rngs)
        self.mid = _mid(cin, cfg, rngs)
        blocks = []
        for i in range(n):  # conv_blocks[0] is the deepest level (mult[-1]), conv_blocks[n-1] level 0
            level = n - 1 - i
            cout = cfg.ch * mult[level]
            blocks.append(
                ConvBlock(cin, cout, cfg.num_res_blocks + 1, i == 0, "up" if level != 0 else None, cfg, rngs=rngs)
            )
            cin = cout
        self.conv_blocks = nnx.List(blocks)
        self.norm_out = GroupNorm(cin, cfg)
        self.conv_out = _conv(cin, 3, 3, cfg, rngs)

    def __call__(self, z: jax.Array, taps: dict | None = None) -> jax.Array:
        """`[B,h,w,z_channels]` → images `[B,h·f,w·f,3]`; `taps` receives "conv_in", "mid_out" and
        "block{i}_up" (after the Upsample of conv_blocks[i])."""
        taps = {} if taps is None else taps
        x = taps["conv_in"] = self.conv_in(z)
        for m in self.mid:
            x = m(x)
        taps["mid_out"] = x
        for i, blk in enumerate(self.conv_blocks):
            x = blk(x)
            if hasattr(blk, "upsample"):
                taps[f"block{i}_up"] = x
        return self.conv_out(swish(self.norm_out(x)))


class VectorQuantizer(nnx.Module):
    """Holds the codebook `embedding` `[K, D]` (the official `quantize.embedding.weight`).

    Replicated: 16384 × 8 values (512 KiB in float32) are not worth sharding, and a vocab-sharded
    codebook would put collectives into every argmin and lookup."""

    def __init__(self, cfg: VQConfig, *, rngs: nnx.Rngs):
        self.l2_norm = cfg.codebook_l2_norm
        shape = (cfg.codebook_size, cfg.codebook_embed_dim)
        self.embedding = param(rngs, normal_init(1.0), shape, cfg.param_dtype, (None, None))

    def codebook(self) -> jax.Array:
        """`[K, D]` float32 rows as the quantizer sees them (l2-normalised if `codebook_l2_norm`)."""
        e = self.embedding[...].astype(jnp.float32)
        return l2_normalize(e) if self.l2_norm else e


class VQModel(nnx.Module):
    """The LlamaGen VQ tokenizer: `encode` → `quantize_codes` → `lookup` → `decode`.

    Shapes: images `[B,H,W,3]` in [-1, 1]; latents / codes on the grid `h = H / f`, `w = W / f`
    with f = `cfg.downsample_factor`; D = `cfg.codebook_embed_dim`.
    """

    def __init__(self, cfg: VQConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        self.quantize = VectorQuantizer(cfg, rngs=rngs)
        self.quant_conv = _conv(cfg.z_channels, cfg.codebook_embed_dim, 1, cfg, rngs)
        self.post_quant_conv = _conv(cfg.codebook_embed_dim, cfg.z_channels, 1, cfg, rngs)

    @property
    def dtype(self) -> jnp.dtype:
        return as_dtype(self.cfg.dtype)

    def encode(self, x: jax.Array, *, collect: bool = False):
        """images `[B,H,W,3]` → pre-quantization latents `[B,h,w,D]` (after `quant_conv`), in `cfg.dtype`.

        With `collect=True` returns `(latents, taps)`, taps = {"conv_in", "level{i}_down",
        "mid_out", "encoder_out"} (the encoder's intermediates, channels-last)."""
        taps: dict = {}
        h = self.encoder(x.astype(self.dtype), taps)
        taps["encoder_out"] = h
        z = self.quant_conv(h)
        return (z, taps) if collect else z

    def quantize_codes(self, z: jax.Array) -> jax.Array:
        """latents `[B,h,w,D]` → int32 codes `[B,h,w]`: nearest codebook row (first on ties) by
        |z|² + |e|² − 2 z·e in float32, z and the rows l2-normalised first if `codebook_l2_norm`."""
        z = z.astype(jnp.float32)
        if self.cfg.codebook_l2_norm:
            z = l2_normalize(z)
        return nearest_codes(z, self.quantize.codebook())

    def encode_codes(self, x: jax.Array) -> jax.Array:
        """images `[B,H,W,3]` → int32 codes `[B,h,w]`."""
        return self.quantize_codes(self.encode(x))

    def lookup(self, codes: jax.Array) -> jax.Array:
        """codes `[B,h,w]` → codebook rows `[B,h,w,D]` in `cfg.dtype` (l2-normalised if `codebook_l2_norm`)."""
        return jnp.take(self.quantize.codebook(), codes, axis=0).astype(self.dtype)

    def decode(self, zq: jax.Array, *, collect: bool = False):
        """quantized latents `[B,h,w,D]` → images `[B,h·f,w·f,3]` (roughly in [-1, 1]), in `cfg.dtype`.

        With `collect=True` returns `(images, taps)`, taps = {"post_quant_conv_out", "conv_in",
        "mid_out", "block{i}_up"} (the decoder's intermediates, channels-last)."""
        taps: dict = {}
        h = taps["post_quant_conv_out"] = self.post_quant_conv(zq.astype(self.dtype))
        img = self.decoder(h, taps)
        return (img, taps) if collect else img

    def decode_code(self, codes: jax.Array, *, collect: bool = False):
        """int codes `[B,h,w]` (row-major token grid) → images `[B,h·f,w·f,3]`."""
        if codes.ndim != 3:
            raise ValueError(f"decode_code takes codes [B, h, w], got shape {codes.shape}")
        return self.decode(self.lookup(codes), collect=collect)
