"""Frozen architecture configs for JanusFlow and parsers for the official on-disk formats.

Every width, depth and grid size comes from here; modules never hard-code the 1.3B sizes.
Configs are hashable (valid `jax.jit` static arguments); derived sizes are properties.

Parsers:
  * `from_official_json(dict)` reads the JanusFlow `config.json` (`language_config`,
    `vision_und_enc_config`, `vision_gen_enc_config`, `vision_gen_dec_config`, each `cls` + `params`).
  * `VaeConfig.from_diffusers(dict)` reads a diffusers `AutoencoderKL` `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

__all__ = [
    "LlamaConfig",
    "SiglipConfig",
    "UViTEncoderConfig",
    "UViTDecoderConfig",
    "VaeConfig",
    "VQConfig",
    "JanusFlowConfig",
    "ConfigError",
    "SIGLIP_MODELS",
    "JANUSFLOW_1_3B",
    "SDXL_VAE",
    "TINY",
    "TINY_VAE",
    "from_official_json",
    "load_official_config",
    "load_vae_config",
]

_DTYPES = ("float32", "bfloat16", "float16")
REMAT_CHOICES = ("none", "full", "dots")


class ConfigError(ValueError):
    """A config file or value that cannot describe a JanusFlow model."""


def _check_dtype(name: str, value: str) -> None:
    if value not in _DTYPES:
        raise ConfigError(f"{name} must be one of {_DTYPES}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """DeepSeek-LLM (Llama architecture) decoder."""

    vocab_size: int  # rows of embed_tokens and lm_head
    hidden_size: int  # model width D
    intermediate_size: int  # SwiGLU width F
    num_hidden_layers: int  # decoder layers L
    num_attention_heads: int  # query heads N
    num_key_value_heads: int  # key/value heads K (N % K == 0)
    head_dim_override: int | None = None  # head width H; default D // N
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base
    max_position_embeddings: int = 4096  # longest context a prompt may use
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # parameter storage dtype
    remat: str = "none"  # rematerialisation policy of the scanned layer body
    scan_layers: bool = True  # False: unroll the layer loop (straight-line HLO, no while loop)
    attn_block: int = 128  # query block of causal attention (speed only; 0 = one block)

    def __post_init__(self):
        _check_dtype("dtype", self.dtype)
        _check_dtype("param_dtype", self.param_dtype)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim_override is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError("hidden_size must be divisible by num_attention_heads")
        if self.remat not in REMAT_CHOICES:
            raise ConfigError(f"remat must be one of {REMAT_CHOICES}, got {self.remat!r}")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiglipConfig:
    """SigLIP ViT understanding encoder (official `siglip_vit.VisionTransformer`, head unused)."""

    image_size: int  # input side in pixels (square)
    patch_size: int  # patch side
    width: int  # embedding width W
    depth: int  # blocks actually built (after select_layer)
    num_heads: int  # attention heads
    mlp_dim: int  # hidden width of the block MLP
    layer_norm_eps: float = 1e-6  # LayerNorm epsilon
    pixel_mean: tuple[float, ...] | None = None  # CLIPVisionTower's optional in-model Normalize
    pixel_std: tuple[float, ...] | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True  # False: unroll the block loop (straight-line HLO, no while loop)

    def __post_init__(self):
        _check_dtype("dtype", self.dtype)
        _check_dtype("param_dtype", self.param_dtype)
        if self.image_size % self.patch_size:
            raise ConfigError("image_size must be a multiple of patch_size")
        if self.width % self.num_heads:
            raise ConfigError("SigLIP width must be divisible by num_heads")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


@dataclasses.dataclass(frozen=True, kw_only=True)
class UViTEncoderConfig:
    """ShallowUViTEncoder: timestep embedding, stem conv, ConvNeXt mid block."""

    input_channels: int = 4  # latent channels
    channels: int  # block_out_channels (single level)
    hidden_size: int  # LLM width (t_emb size and FiLM input)
    kernel_size: int = 2
    stride: int = 2
    padding: int = 0
    layers_in_middle: int = 2
    norm_eps: float = 1e-6
    use_bias: bool = True
    use_mid_block: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"


@dataclasses.dataclass(frozen=True, kw_only=True)
class UViTDecoderConfig:
    """ShallowUViTDecoder: input RMSNorm, skip concat, ConvNeXt mid block, Unpatchify chain."""

    in_channels: int  # channels coming from the LLM side (after the decoder aligner)
    channels: int  # block_out_channels[-1] (the encoder skip width)
    out_channels: int = 4  # latent channels
    hidden_size: int  # LLM width (FiLM input)
    upsamples: int = 1  # number of Unpatchify(2) stages
    layers_in_middle: int = 2
    norm_eps: float = 1e-6
    use_bias: bool = True
    use_mid_block: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def mid_channels(self) -> int:
        return self.in_channels + self.channels


@dataclasses.dataclass(frozen=True, kw_only=True)
class VaeConfig:
    """diffusers AutoencoderKL (SDXL-VAE structure)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.13025
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    sample_size: int = 1024  # informational only (diffusers' nominal resolution)
    dtype: str = "float32"  # never float16 (SDXL-VAE overflows)
    param_dtype: str = "float32"

    def __post_init__(self):
        _check_dtype("dtype", self.dtype)
        _check_dtype("param_dtype", self.param_dtype)
        if self.dtype == "float16" or self.param_dtype == "float16":
            raise ConfigError("the SDXL VAE is unstable in float16; use bfloat16 or float32")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ConfigError(f"VAE channels {c} not divisible by norm_num_groups={self.norm_num_groups}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    _KNOWN = frozenset(
        "_class_name _diffusers_version _name_or_path act_fn block_out_channels down_block_types "
        "force_upcast in_channels latent_channels latents_mean latents_std layers_per_block "
        "mid_block_add_attention norm_num_groups out_channels sample_size scaling_factor "
        "shift_factor up_block_types use_post_quant_conv use_quant_conv".split()
    )

    @classmethod
    def from_diffusers(cls, d: dict[str, Any]) -> "VaeConfig":
        unknown = sorted(k for k in set(d) - cls._KNOWN if not k.startswith("_"))  # "_*": diffusers bookkeeping
        if unknown:
            raise ConfigError(f"VAE config.json: unknown field(s) {unknown}")
        name = d.get("_class_name", "AutoencoderKL")
        if name != "AutoencoderKL":
            raise ConfigError(f"VAE config.json: _class_name {name!r} is not AutoencoderKL")
        if d.get("act_fn", "silu") != "silu":
            raise ConfigError(f"VAE config.json: act_fn {d['act_fn']!r} unsupported (only silu)")
        n = len(d.get("block_out_channels", cls.block_out_channels))
        for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            got = d.get(key, [want] * n)
            if list(got) != [want] * n:
                raise ConfigError(f"VAE config.json: {key}={got} unsupported (need {n} x {want})")
        for key in ("latents_mean", "latents_std"):
            if d.get(key) is not None:
                raise ConfigError(f"VAE config.json: {key} is set; only None is supported")
        kw = {
            k: d[k]
            for k in (
                "in_channels out_channels latent_channels layers_per_block norm_num_groups "
                "scaling_factor shift_factor use_quant_conv use_post_quant_conv "
                "mid_block_add_attention sample_size"
            ).split()
            if k in d
        }
        if "block_out_channels" in d:
            kw["block_out_channels"] = tuple(int(c) for c in d["block_out_channels"])
        if kw.get("use_quant_conv") is None:
            kw.pop("use_quant_conv", None)
        if kw.get("use_post_quant_conv") is None:
            kw.pop("use_post_quant_conv", None)
        return cls(**kw)

    def to_diffusers(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "act_fn": "silu",
            "block_out_channels": list(self.block_out_channels),
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "layers_per_block": self.layers_per_block,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "use_quant_conv": self.use_quant_conv,
            "use_post_quant_conv": self.use_post_quant_conv,
            "mid_block_add_attention": self.mid_block_add_attention,
            "sample_size": self.sample_size,
            "latents_mean": None,
            "latents_std": None,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQConfig:
    """LlamaGen VQ tokenizer ("VQ-16" in Janus): encoder, l2-normalised codebook, decoder.

    Defaults are the official `vq_model.ModelArgs` / `Encoder` / `Decoder` defaults (the real
    Janus checkpoints build `VQ_16()` with no arguments, so their config.json names no VQ size).
    Fixed by the official code, not configurable: GroupNorm 32 groups, eps 1e-6, swish, dropout 0.
    """

    codebook_size: int = 16384  # codebook rows K (= image vocabulary of gen_head / gen_embed)
    codebook_embed_dim: int = 8  # code dimension
    codebook_l2_norm: bool = True  # normalise latents and codebook rows before the lookup
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # channel multiplier per encoder level
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # per decoder level (listed from level 0)
    z_channels: int = 256  # encoder output / decoder input channels
    ch: int = 128  # base channels
    num_res_blocks: int = 2  # ResnetBlocks per encoder level (the decoder has one more)
    norm_groups: int = 32  # GroupNorm groups (fixed in the official code)
    norm_eps: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        _check_dtype("dtype", self.dtype)
        _check_dtype("param_dtype", self.param_dtype)
        for c in [self.ch * m for m in self.encoder_ch_mult + self.decoder_ch_mult] + [self.z_channels]:
            if c % self.norm_groups:
                raise ConfigError(f"VQ channels {c} are not a multiple of the {self.norm_groups} GroupNorm groups")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JanusFlowConfig:
    """The whole model: LLM, understanding encoder, generation encoder/decoder and aligners.

    The VAE is a separate config (it lives in its own diffusers folder) but travels with the model.
    """

    llm: LlamaConfig
    siglip: SiglipConfig
    gen_enc: UViTEncoderConfig
    gen_dec: UViTDecoderConfig
    gen_image_size: int  # side of generated images in pixels (VAE space)
    official: dict | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self):
        if self.gen_enc.hidden_size != self.llm.hidden_size or self.gen_dec.hidden_size != self.llm.hidden_size:
            raise ConfigError(
                f"generation encoder/decoder hidden_size ({self.gen_enc.hidden_size}/{self.gen_dec.hidden_size}) "
                f"must equal the LLM hidden_size ({self.llm.hidden_size})"
            )
        if self.gen_dec.channels != self.gen_enc.channels:
            raise ConfigError(
                f"decoder block_out_channels[-1]={self.gen_dec.channels} must equal the encoder skip "
                f"width {self.gen_enc.channels}"
            )

    # Derived aligner sizes (the official code hard-codes them at the 1.3B sizes).
    @property
    def und_aligner_dims(self) -> tuple[int, int]:
        return (self.siglip.width, self.llm.hidden_size)

    @property
    def gen_enc_aligner_dims(self) -> tuple[int, int]:
        return (self.gen_enc.channels, self.llm.hidden_size)

    @property
    def gen_dec_aligner_dims(self) -> tuple[int, int]:
        return (self.llm.hidden_size, self.gen_dec.in_channels)

    def latent_size(self, vae: VaeConfig) -> int:
        return self.gen_image_size // vae.downsample_factor

    def grid_for_latent(self, latent_side: int) -> int:
        """Side of the image-token grid for latents of side `latent_side` (the stem conv's output)."""
        k, s, p = self.gen_enc.kernel_size, self.gen_enc.stride, self.gen_enc.padding
        return (latent_side + 2 * p - k) // s + 1

    def gen_grid(self, vae: VaeConfig) -> int:
        return self.grid_for_latent(self.latent_size(vae))

    def num_gen_tokens(self, vae: VaeConfig) -> int:
        return self.gen_grid(vae) ** 2

    def with_dtype(self, dtype: str, param_dtype: str | None = None) -> "JanusFlowConfig":
        param_dtype = param_dtype or dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        return dataclasses.replace(
            self,
            llm=dataclasses.replace(self.llm, **kw),
            siglip=dataclasses.replace(self.siglip, **kw),
            gen_enc=dataclasses.replace(self.gen_enc, **kw),
            gen_dec=dataclasses.replace(self.gen_dec, **kw),
        )

    def with_remat(self, remat: str, scan_layers: bool = True) -> "JanusFlowConfig":
        """Layer-loop settings of the two transformers: the remat policy, and whether the layers run
        as a `scan` (one while loop: fast compiles) or unrolled (see README: XLA:CPU can deadlock
        on collectives next to a while loop on simulated multi-device meshes)."""
        kw = dict(remat=remat, scan_layers=scan_layers)
        return dataclasses.replace(
            self, llm=dataclasses.replace(self.llm, **kw), siglip=dataclasses.replace(self.siglip, **kw)
        )

    def to_official_json(self) -> dict[str, Any]:
        """The official JanusFlow `config.json` describing this architecture; `from_official_json`
        of it gives this config. A SigLIP that is an entry of the official table is named by
        `model_name` (+ `select_layer` for fewer blocks), as the real config does; any other gets
        the `siglip_vit_cfg` addition of the reference fixtures. `hardcoded_dims` records the
        aligner sizes the official code hard-codes at 1.3B."""
        llm, sig, enc, dec = self.llm, self.siglip, self.gen_enc, self.gen_dec
        if self.gen_image_size != sig.image_size:
            raise ConfigError(
                f"gen_image_size {self.gen_image_size} differs from the SigLIP image size {sig.image_size}: "
                "the official JanusFlow config.json cannot express it"
            )
        vision: dict[str, Any] = {"image_size": sig.image_size, "select_feature": "same"}
        for name, t in SIGLIP_MODELS.items():
            same = (t["patch_size"], t["width"], t["heads"], int(t["width"] * t["mlp_ratio"]))
            want = (sig.patch_size, sig.width, sig.num_heads, sig.mlp_dim)
            if same == want and t["layers"] >= sig.depth and sig.layer_norm_eps == 1e-6:
                vision.update(model_name=name, select_layer=sig.depth - t["layers"] - 1)
                break
        else:
            vision.update(
                model_name=f"siglip_custom_patch{sig.patch_size}_{sig.image_size}",
                select_layer=-1,
                siglip_vit_cfg=siglip_official_json(sig),
            )
        if sig.pixel_mean is not None:
            vision.update(pixel_mean=list(sig.pixel_mean), pixel_std=list(sig.pixel_std))
        return {
            "architectures": ["MultiModalityCausalLM"],
            "model_type": "multi_modality",
            "language_config": llama_official_json(llm),
            "vision_und_enc_config": {"cls": "CLIPVisionTower", "model_type": "vision_und_enc", "params": vision},
            "vision_gen_enc_config": {
                "cls": "ShallowUViTEncoder",
                "model_type": "vision_gen_enc",
                "params": {
                    "block_out_channels": [enc.channels],
                    "elementwize_affine": True,  # sic: the official key
                    "hidden_size": enc.hidden_size,
                    "input_channels": enc.input_channels,
                    "kernel_size": enc.kernel_size,
                    "layers_in_middle": enc.layers_in_middle,
                    "norm_eps": enc.norm_eps,
                    "padding": enc.padding,
                    "stride": enc.stride,
                    "use_bias": enc.use_bias,
                    "use_mid_block": enc.use_mid_block,
                },
            },
            "vision_gen_dec_config": {
                "cls": "ShallowUViTDecoder",
                "model_type": "vision_gen_dec",
                "params": {
                    "block_out_channels": [dec.channels],
                    "elementwise_affine": True,
                    "hidden_size": dec.hidden_size,
                    "in_channels": dec.in_channels,
                    "layers_in_middle": dec.layers_in_middle,
                    "norm_eps": dec.norm_eps,
                    "out_channels": dec.out_channels,
                    "upsamples": dec.upsamples,
                    "use_bias": dec.use_bias,
                    "use_mid_block": dec.use_mid_block,
                },
            },
            "hardcoded_dims": {
                "vision_und_enc_aligner": list(self.und_aligner_dims),
                "beg_of_und_embed": [1, llm.hidden_size],
                "vision_gen_enc_aligner": list(self.gen_enc_aligner_dims),
                "vision_gen_dec_aligner_norm": llm.hidden_size,
                "vision_gen_dec_aligner": list(self.gen_dec_aligner_dims),
            },
        }


# The official `siglip_vit.SigLIP_MODEL_CONFIG` table, by model_name (public architecture facts).
SIGLIP_MODELS: dict[str, dict[str, Any]] = {
    "siglip_so400m_patch14_384": dict(image_size=336, patch_size=14, width=1152, layers=27, heads=16, mlp_ratio=3.7362),
    "siglip_so400m_patch14_224": dict(image_size=224, patch_size=14, width=1152, layers=27, heads=16, mlp_ratio=3.7362),
    "siglip_large_patch16_384": dict(image_size=384, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4),
    "siglip_large_patch16_256": dict(image_size=256, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4),
}

_LLAMA_KNOWN = frozenset(
    "hidden_size intermediate_size max_position_embeddings model_type num_attention_heads num_hidden_layers "
    "num_key_value_heads torch_dtype vocab_size rms_norm_eps rope_theta hidden_act attention_bias tie_word_embeddings "
    "pretraining_tp rope_scaling head_dim bos_token_id eos_token_id pad_token_id initializer_range use_cache "
    "attention_dropout mlp_bias _name_or_path architectures transformers_version".split()
)
_LLAMA_REQUIRED = ("num_hidden_layers", "vocab_size")
_TOP_KNOWN = frozenset(
    "architectures language_config model_type torch_dtype transformers_version vision_gen_dec_config "
    "vision_gen_enc_config vision_und_enc_config hardcoded_dims _name_or_path".split()
)
_UND_KNOWN = frozenset(
    "image_size model_name select_feature select_layer select_layers siglip_vit_cfg ckpt_path pixel_mean "
    "pixel_std ignore_head weight_init".split()
)
_ENC_KNOWN = frozenset(
    "block_out_channels elementwize_affine elementwise_affine hidden_size input_channels kernel_size "
    "layers_in_middle norm_eps num_extra_tensors padding stride use_bias use_mid_block dropout".split()
)
_DEC_KNOWN = frozenset(
    "block_out_channels elementwise_affine elementwize_affine hidden_size in_channels layers_in_middle norm_eps "
    "out_channels upsamples use_bias use_mid_block dropout".split()
)


def _require(d: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ConfigError(f"{where}: missing required field(s) {missing}")


def _unknown(d: dict, known: frozenset, where: str) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {extra}")


def _section(d: dict, name: str, cls_names: tuple[str, ...]) -> dict:
    if name not in d:
        raise ConfigError(f"config.json: missing section {name!r}")
    sec = d[name]
    if not isinstance(sec, dict):
        raise ConfigError(f"config.json: {name} must be an object")
    cls = sec.get("cls")
    if cls is None:
        raise ConfigError(f"config.json: {name}.cls is missing")
    if cls not in cls_names:
        raise ConfigError(f"config.json: {name}.cls={cls!r} is unknown (expected one of {list(cls_names)})")
    params = sec.get("params")
    if not isinstance(params, dict):
        raise ConfigError(f"config.json: {name}.params is missing or not an object")
    return params


# transformers' `LlamaConfig` defaults: the real Janus-Pro-7B `language_config` states only
# num_hidden_layers, vocab_size and max_position_embeddings and leaves the rest to these.
LLAMA_DEFAULTS: dict[str, Any] = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_attention_heads=32,
    num_key_value_heads=None,  # None: = num_attention_heads
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=2048,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=False,
    rope_scaling=None,
    pretraining_tp=1,
    head_dim=None,
)


def llama_official_json(llm: LlamaConfig) -> dict:
    """The official `language_config` of a Llama config (what `parse_llama` reads back)."""
    return {
        "model_type": "llama",
        "vocab_size": llm.vocab_size,
        "hidden_size": llm.hidden_size,
        "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_hidden_layers,
        "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_key_value_heads,
        **({"head_dim": llm.head_dim_override} if llm.head_dim_override else {}),
        "rms_norm_eps": llm.rms_norm_eps,
        "rope_theta": llm.rope_theta,
        "max_position_embeddings": llm.max_position_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
    }


def parse_llama(lc: Any, where: str = "config.json language_config") -> LlamaConfig:
    """The official `language_config` (a transformers LlamaConfig dict) with LlamaConfig's defaults
    filled in. `vocab_size` and `num_hidden_layers` are required: every real config states them, and
    transformers' 32000-token / 32-layer defaults would silently build a different model."""
    if not isinstance(lc, dict):
        raise ConfigError(f"{where} must be an object")
    _unknown(lc, _LLAMA_KNOWN, where)
    _require(lc, _LLAMA_REQUIRED, where)
    c = {**LLAMA_DEFAULTS, **{k: v for k, v in lc.items() if v is not None or k not in LLAMA_DEFAULTS}}
    if c["hidden_act"] != "silu":
        raise ConfigError(f"{where}: hidden_act={c['hidden_act']!r} unsupported (only silu)")
    if c["attention_bias"] or c["mlp_bias"]:
        raise ConfigError(f"{where}: attention/mlp biases are not supported")
    if c["tie_word_embeddings"]:
        raise ConfigError(f"{where}: tied embeddings are not supported (the Janus family has an untied lm_head)")
    if c["rope_scaling"] is not None:
        raise ConfigError(f"{where}: rope_scaling is not supported")
    if c["pretraining_tp"] != 1:
        raise ConfigError(f"{where}: pretraining_tp != 1 is not supported")
    try:
        return LlamaConfig(
            vocab_size=int(c["vocab_size"]),
            hidden_size=int(c["hidden_size"]),
            intermediate_size=int(c["intermediate_size"]),
            num_hidden_layers=int(c["num_hidden_layers"]),
            num_attention_heads=int(c["num_attention_heads"]),
            num_key_value_heads=int(c["num_key_value_heads"] or c["num_attention_heads"]),
            head_dim_override=None if c["head_dim"] is None else int(c["head_dim"]),
            rms_norm_eps=float(c["rms_norm_eps"]),
            rope_theta=float(c["rope_theta"]),
            max_position_embeddings=int(c["max_position_embeddings"]),
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise ConfigError(f"{where}: {e}") from None
        raise ConfigError(f"{where}: {e}") from None


def siglip_official_json(sig: SiglipConfig) -> dict:
    """The official `siglip_vit_cfg` of a SigLIP config (what `parse_siglip` reads back)."""
    return {
        "image_size": sig.image_size,
        "patch_size": sig.patch_size,
        "width": sig.width,
        "layers": sig.depth,
        "heads": sig.num_heads,
        "mlp_ratio": sig.mlp_dim / sig.width,
        "global_pool": "map",
        "use_checkpoint": False,
        **({"layer_norm_eps": sig.layer_norm_eps} if sig.layer_norm_eps != 1e-6 else {}),
    }


def parse_siglip(up: dict, where: str) -> SiglipConfig:
    """The `params` of an official `CLIPVisionTower` section (JanusFlow `vision_und_enc_config`,
    Janus `vision_config`): the SigLIP table entry by model_name (or the `siglip_vit_cfg` override)
    and the block count left by `select_layer`."""
    _unknown(up, _UND_KNOWN, f"config.json {where}.params")
    model_name = up.get("model_name", "siglip_large_patch16_384")
    if not str(model_name).startswith("siglip"):
        raise ConfigError(f"{where}.params.model_name={model_name!r}: only SigLIP towers are supported")
    if "siglip_vit_cfg" in up:
        vc = up["siglip_vit_cfg"]
        _require(vc, ("patch_size", "width", "layers", "heads", "mlp_ratio"), "siglip_vit_cfg")
    elif model_name in SIGLIP_MODELS:
        vc = SIGLIP_MODELS[model_name]
    else:
        raise ConfigError(
            f"{where}.params.model_name={model_name!r} is not a known SigLIP model "
            f"({sorted(SIGLIP_MODELS)}) and no siglip_vit_cfg is given"
        )
    select_layer = int(up.get("select_layer", -2))  # CLIPVisionTower's default
    if up.get("select_layers"):
        raise ConfigError(f"{where}.params.select_layers is not supported")
    layers = int(vc["layers"])
    depth = min(layers, layers + select_layer + 1) if select_layer <= 0 else min(layers, select_layer)
    if depth <= 0:
        raise ConfigError(f"select_layer={select_layer} leaves no SigLIP blocks")
    width = int(vc["width"])
    pm, ps = up.get("pixel_mean"), up.get("pixel_std")
    return SiglipConfig(
        image_size=int(up.get("image_size", vc.get("image_size", 336))),
        patch_size=int(vc["patch_size"]),
        width=width,
        depth=depth,
        num_heads=int(vc["heads"]),
        mlp_dim=int(width * float(vc["mlp_ratio"])),
        layer_norm_eps=float(vc.get("layer_norm_eps", 1e-6)),  # our addition (transformers-layout sources)
        pixel_mean=tuple(pm) if pm is not None and ps is not None else None,
        pixel_std=tuple(ps) if pm is not None and ps is not None else None,
    )


def parse_shared(d: Any, top_known: frozenset, vision_section: str) -> tuple[LlamaConfig, SiglipConfig]:
    """What every family's official config.json shares: a top-level object with known fields only,
    `language_config` (the LLM) and a `CLIPVisionTower` section (SigLIP) under `vision_section`."""
    if not isinstance(d, dict):
        raise ConfigError("config.json: top level must be an object")
    _unknown(d, top_known, "config.json")
    if "language_config" not in d:
        raise ConfigError("config.json: missing section 'language_config'")
    llm = parse_llama(d["language_config"])
    return llm, parse_siglip(_section(d, vision_section, ("CLIPVisionTower",)), vision_section)


def from_official_json(d: dict[str, Any], *, gen_image_size: int | None = None) -> JanusFlowConfig:
    """Parse the official JanusFlow `config.json` (as a dict) into a JanusFlowConfig."""
    llm, siglip = parse_shared(d, _TOP_KNOWN, "vision_und_enc_config")

    ep = _section(d, "vision_gen_enc_config", ("ShallowUViTEncoder",))
    _unknown(ep, _ENC_KNOWN, "config.json vision_gen_enc_config.params")
    boc = [int(c) for c in ep.get("block_out_channels", [768])]
    if len(set(boc)) != 1:
        raise ConfigError(f"vision_gen_enc_config: block_out_channels={boc} must be a single width")
    k = int(ep.get("kernel_size", 7))
    s = int(ep.get("stride", 4))
    pad = ep.get("padding")
    pad = int(pad) if pad is not None else k - s  # official: ceil(kernel_size - stride)
    gen_enc = UViTEncoderConfig(
        input_channels=int(ep.get("input_channels", 3)),
        channels=boc[0],
        hidden_size=int(ep.get("hidden_size", 2048)),
        kernel_size=k,
        stride=s,
        padding=pad,
        layers_in_middle=int(ep.get("layers_in_middle", 2)),
        norm_eps=float(ep.get("norm_eps", 1e-6)),
        use_bias=bool(ep.get("use_bias", True)),
        use_mid_block=bool(ep.get("use_mid_block", True)),
    )

    dp = _section(d, "vision_gen_dec_config", ("ShallowUViTDecoder",))
    _unknown(dp, _DEC_KNOWN, "config.json vision_gen_dec_config.params")
    dboc = [int(c) for c in dp.get("block_out_channels", [768])]
    gen_dec = UViTDecoderConfig(
        in_channels=int(dp.get("in_channels", 768)),
        channels=dboc[-1],
        out_channels=int(dp.get("out_channels", 3)),
        hidden_size=int(dp.get("hidden_size", 2048)),
        upsamples=int(dp.get("upsamples", 2)),
        layers_in_middle=int(dp.get("layers_in_middle", 2)),
        norm_eps=float(dp.get("norm_eps", 1e-6)),
        use_bias=bool(dp.get("use_bias", True)),
        use_mid_block=bool(dp.get("use_mid_block", True)),
    )
    cfg = JanusFlowConfig(
        llm=llm,
        siglip=siglip,
        gen_enc=gen_enc,
        gen_dec=gen_dec,
        gen_image_size=int(gen_image_size or siglip.image_size),
        official=d,
    )
    hd = d.get("hardcoded_dims")
    if hd is not None:
        want = {
            "vision_und_enc_aligner": list(cfg.und_aligner_dims),
            "beg_of_und_embed": [1, llm.hidden_size],
            "vision_gen_enc_aligner": list(cfg.gen_enc_aligner_dims),
            "vision_gen_dec_aligner_norm": llm.hidden_size,
            "vision_gen_dec_aligner": list(cfg.gen_dec_aligner_dims),
        }
        _unknown(hd, frozenset(want), "config.json hardcoded_dims")
        for key, val in hd.items():
            if val != want[key]:
                raise ConfigError(
                    f"config.json hardcoded_dims.{key}={val} disagrees with the network widths ({want[key]})"
                )
    return cfg


def read_json(path: str) -> dict:
    """A JSON file as a dict; a missing file or invalid JSON is a `ConfigError` naming the path."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None


def _load(path: str, parse):
    try:
        return parse(read_json(path))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(path) else f"{path}: {msg}") from None


def load_official_config(model_dir: str, **kw) -> JanusFlowConfig:
    """Read `model_dir/config.json` (official JanusFlow format)."""
    return _load(os.path.join(model_dir, "config.json"), lambda d: from_official_json(d, **kw))


def load_vae_config(vae_dir: str) -> VaeConfig:
    """Read `vae_dir/config.json` (diffusers AutoencoderKL format)."""
    return _load(os.path.join(vae_dir, "config.json"), VaeConfig.from_diffusers)


# --- presets -------------------------------------------------------------------------------------

JANUSFLOW_1_3B = JanusFlowConfig(
    llm=LlamaConfig(
        vocab_size=102400,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=16384,
    ),
    siglip=SiglipConfig(image_size=384, patch_size=16, width=1024, depth=24, num_heads=16, mlp_dim=4096),
    gen_enc=UViTEncoderConfig(input_channels=4, channels=768, hidden_size=2048),
    gen_dec=UViTDecoderConfig(in_channels=768, channels=768, out_channels=4, hidden_size=2048, upsamples=1),
    gen_image_size=384,
)

SDXL_VAE = VaeConfig()

# Same sizes as ../shared/reference/janusflow-tiny (the golden-fixture model).
TINY = JanusFlowConfig(
    llm=LlamaConfig(
        vocab_size=272,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    ),
    siglip=SiglipConfig(image_size=64, patch_size=16, width=64, depth=2, num_heads=4, mlp_dim=256),
    gen_enc=UViTEncoderConfig(input_channels=4, channels=32, hidden_size=64),
    gen_dec=UViTDecoderConfig(in_channels=32, channels=32, out_channels=4, hidden_size=64, upsamples=1),
    gen_image_size=64,
)

TINY_VAE = VaeConfig(block_out_channels=(16, 32, 64, 64), norm_num_groups=8, sample_size=64)
