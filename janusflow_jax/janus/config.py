"""Janus architecture config and the parser of the official Janus `config.json`.

Sections (each `cls` + `params`, as in deepseek-ai/Janus-1.3B, Janus-Pro-1B/7B): `language_config`
(a transformers LlamaConfig dict; missing fields take LlamaConfig's defaults, which Janus-Pro-7B
relies on), `vision_config` (CLIPVisionTower), `aligner_config` / `gen_aligner_config`
(MlpProjector), `gen_head_config` (vision_head), `gen_vision_config` (VQ-16). The official code
builds the VQ as `VQ_16()` with no arguments, so its sizes are `VQConfig`'s defaults unless
`gen_vision_config.params.vq_model_args` (the reference fixtures' addition) says otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from janusflow_jax.config import (
    ConfigError,
    LlamaConfig,
    SiglipConfig,
    VQConfig,
    _check_dtype,
    _require,
    _section,
    _unknown,
    llama_official_json,
    parse_llama,
    parse_shared,
    siglip_official_json,
)

__all__ = [
    "ProjectorConfig",
    "GenHeadConfig",
    "JanusConfig",
    "from_official_json",
    "is_janus_config",
    "is_hf_janus_config",
    "from_hf_json",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProjectorConfig:
    """Official `MlpProjector`: "linear" (one Linear) or "mlp_gelu" (Linear, then depth−1 × (GELU, Linear))."""

    projector_type: str  # "linear" | "mlp_gelu"
    input_dim: int
    n_embed: int  # output (and hidden) width
    depth: int = 1
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.projector_type not in ("linear", "mlp_gelu"):
            raise ConfigError(f"MlpProjector projector_type={self.projector_type!r} unsupported (linear, mlp_gelu)")
        if self.depth < 1:
            raise ConfigError(f"MlpProjector depth must be >= 1, got {self.depth}")
        _check_dtype("dtype", self.dtype)

    @property
    def num_linears(self) -> int:
        return 1 if self.projector_type == "linear" else self.depth


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenHeadConfig:
    """Official `vision_head`: Linear(n_embed → image_token_embed), exact GELU, Linear(→ image_token_size)."""

    n_embed: int
    image_token_embed: int
    image_token_size: int
    dtype: str = "float32"
    param_dtype: str = "float32"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JanusConfig:
    llm: LlamaConfig
    siglip: SiglipConfig
    aligner: ProjectorConfig  # SigLIP features → LLM width (understanding)
    gen_aligner: ProjectorConfig  # gen_embed rows → LLM width (generation input)
    gen_head: GenHeadConfig  # LLM hidden → image-code logits
    vq: VQConfig
    image_token_size: int  # rows of gen_embed (= the codebook size)
    gen_embed_dim: int  # width of gen_embed (= the code dimension)
    gen_image_size: int  # side of generated images in pixels (the official scripts: 384)
    official: dict | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    family = "janus"

    def __post_init__(self):
        d = self.llm.hidden_size
        checks = [
            ("aligner_config.params.input_dim", self.aligner.input_dim, self.siglip.width, "the SigLIP width"),
            ("aligner_config.params.n_embed", self.aligner.n_embed, d, "the LLM hidden_size"),
            ("gen_aligner_config.params.input_dim", self.gen_aligner.input_dim, self.gen_embed_dim,
             "gen_vision_config.params.n_embed"),
            ("gen_aligner_config.params.n_embed", self.gen_aligner.n_embed, d, "the LLM hidden_size"),
            ("gen_head_config.params.n_embed", self.gen_head.n_embed, d, "the LLM hidden_size"),
            ("gen_head_config.params.image_token_size", self.gen_head.image_token_size, self.image_token_size,
             "gen_vision_config.params.image_token_size"),
            ("gen_vision_config.params.image_token_size", self.image_token_size, self.vq.codebook_size,
             "the VQ codebook size"),
            ("gen_vision_config.params.n_embed", self.gen_embed_dim, self.vq.codebook_embed_dim,
             "the VQ code dimension"),
        ]  # fmt: skip
        for name, got, want, what in checks:
            if got != want:
                raise ConfigError(f"config.json {name}={got} must equal {what} ({want})")
        if self.gen_image_size % self.vq.downsample_factor:
            raise ConfigError(
                f"gen_image_size {self.gen_image_size} is not a multiple of the VQ downsampling "
                f"{self.vq.downsample_factor}"
            )

    @property
    def gen_grid(self) -> int:
        """Side of the generated image-code grid."""
        return self.gen_image_size // self.vq.downsample_factor

    @property
    def num_gen_tokens(self) -> int:
        return self.gen_grid**2

    def with_dtype(self, dtype: str, param_dtype: str | None = None) -> "JanusConfig":
        kw = dict(dtype=dtype, param_dtype=param_dtype or dtype)
        r = dataclasses.replace
        return r(
            self,
            llm=r(self.llm, **kw),
            siglip=r(self.siglip, **kw),
            aligner=r(self.aligner, **kw),
            gen_aligner=r(self.gen_aligner, **kw),
            gen_head=r(self.gen_head, **kw),
            vq=r(self.vq, **kw),
        )

    def with_remat(self, remat: str, scan_layers: bool = True) -> "JanusConfig":
        kw = dict(remat=remat, scan_layers=scan_layers)
        r = dataclasses.replace
        return r(self, llm=r(self.llm, **kw), siglip=r(self.siglip, **kw))

    def to_official_json(self) -> dict[str, Any]:
        """The official `config.json` (MultiModalityCausalLM) describing this architecture, with the
        two additions the official format needs for non-standard sizes (`siglip_vit_cfg`,
        `vq_model_args`, as in the reference fixtures) and `gen_image_size`; parsing it back with
        `from_official_json` gives this config."""
        llm, sig, vq = self.llm, self.siglip, self.vq

        def proj(p: ProjectorConfig, kind: str) -> dict:
            params = {
                "depth": p.depth,
                "input_dim": p.input_dim,
                "n_embed": p.n_embed,
                "projector_type": p.projector_type,
            }
            return {"cls": "MlpProjector", "model_type": kind, "params": params}

        return {
            "architectures": ["MultiModalityCausalLM"],
            "model_type": "multi_modality",
            "language_config": llama_official_json(llm),
            "vision_config": {
                "cls": "CLIPVisionTower",
                "model_type": "vision",
                "params": {
                    "image_size": sig.image_size,
                    "model_name": "siglip_large_patch16_384",
                    "select_feature": "same",
                    "select_layer": -1,
                    "siglip_vit_cfg": siglip_official_json(sig),
                    **(
                        {"pixel_mean": list(sig.pixel_mean), "pixel_std": list(sig.pixel_std)} if sig.pixel_mean else {}
                    ),
                },
            },
            "aligner_config": proj(self.aligner, "aligner"),
            "gen_aligner_config": proj(self.gen_aligner, "gen_aligner"),
            "gen_head_config": {
                "cls": "vision_head",
                "model_type": "gen_head",
                "params": {
                    "image_token_embed": self.gen_head.image_token_embed,
                    "image_token_size": self.gen_head.image_token_size,
                    "n_embed": self.gen_head.n_embed,
                },
            },
            "gen_vision_config": {
                "cls": "VQ-16",
                "model_type": "gen_vision",
                "params": {
                    "image_token_size": self.image_token_size,
                    "n_embed": self.gen_embed_dim,
                    "vq_model_args": {
                        "codebook_size": vq.codebook_size,
                        "codebook_embed_dim": vq.codebook_embed_dim,
                        "codebook_l2_norm": vq.codebook_l2_norm,
                        "encoder_ch_mult": list(vq.encoder_ch_mult),
                        "decoder_ch_mult": list(vq.decoder_ch_mult),
                        "z_channels": vq.z_channels,
                        "ch": vq.ch,
                        "num_res_blocks": vq.num_res_blocks,
                    },
                },
            },
            "gen_image_size": self.gen_image_size,
        }

    def to_hf_json(self, token_ids: dict[str, int] | None = None, dtype: str = "float32") -> dict[str, Any]:
        """transformers' `JanusForConditionalGeneration` config.json for this architecture (every
        field written out; `from_hf_json` of it gives an equivalent config). `token_ids` (bos_id,
        eos_id, pad_id, image_id) fill the text config's special ids and `image_token_id`. A
        ConfigError names what transformers' Janus cannot express: its aligners and head are GELU
        MLPs of the LLM width, the in-model pixel normalisation does not exist there, the VQ
        encoder and decoder share one channel multiplier and the codes are l2-normalised, and the
        generated image is one code per SigLIP patch."""
        llm, sig, vq, ids = self.llm, self.siglip, self.vq, token_ids or {}
        d = llm.hidden_size
        grid = sig.image_size // sig.patch_size
        mlp_ratio = sig.mlp_dim / sig.width
        checks = [
            (self.aligner.n_embed == d and self.gen_aligner.n_embed == d, "the aligners' output width is not the LLM width"),
            (self.gen_head.image_token_embed == d, f"gen_head width {self.gen_head.image_token_embed} is not the LLM width {d}"),
            (self.gen_head.n_embed == d, "gen_head input is not the LLM width"),
            (sig.pixel_mean is None, "the SigLIP tower normalises pixels inside the model"),
            (vq.encoder_ch_mult == vq.decoder_ch_mult, "the VQ encoder and decoder channel multipliers differ"),
            (vq.codebook_l2_norm, "the VQ codebook is not l2-normalised"),
            (vq.norm_groups == 32 and vq.norm_eps == 1e-6, "the VQ GroupNorm is not 32 groups, eps 1e-6"),
            (self.gen_image_size == grid * vq.downsample_factor,
             f"gen_image_size {self.gen_image_size} is not {grid} codes (one per SigLIP patch) × {vq.downsample_factor}"),
            (int(sig.width * mlp_ratio) == sig.mlp_dim, f"SigLIP mlp width {sig.mlp_dim} is no ratio of {sig.width}"),
        ]  # fmt: skip
        for ok, why in checks:
            if not ok:
                raise ConfigError(f"transformers' Janus layout cannot express this model: {why}")
        text = {
            "model_type": "llama",
            "vocab_size": llm.vocab_size,
            "hidden_size": d,
            "intermediate_size": llm.intermediate_size,
            "num_hidden_layers": llm.num_hidden_layers,
            "num_attention_heads": llm.num_attention_heads,
            "num_key_value_heads": llm.num_key_value_heads,
            **({"head_dim": llm.head_dim_override} if llm.head_dim_override else {}),
            "rms_norm_eps": llm.rms_norm_eps,
            "rope_theta": llm.rope_theta,  # transformers 4.x
            "rope_parameters": {"rope_type": "default", "rope_theta": llm.rope_theta},  # 5.x
            "max_position_embeddings": llm.max_position_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "tie_word_embeddings": False,
            **{f"{k}_token_id": ids[f"{k}_id"] for k in ("bos", "eos", "pad") if f"{k}_id" in ids},
        }
        vision = {
            "model_type": "janus_vision_model",
            "hidden_size": sig.width,
            "num_hidden_layers": sig.depth,
            "num_attention_heads": sig.num_heads,
            "num_channels": 3,
            "image_size": sig.image_size,
            "patch_size": sig.patch_size,
            "hidden_act": "gelu",
            "layer_norm_eps": sig.layer_norm_eps,
            "attention_dropout": 0.0,
            "mlp_ratio": mlp_ratio,
            "attention_bias": True,
            "hidden_dropout_rate": 0.0,
            "projection_dim": d,
            "projection_dropout": 0.0,
            "use_qk_norm": False,
            "depth": self.aligner.num_linears,
            "num_image_tokens": grid * grid,
        }
        vq_cfg = {
            "model_type": "janus_vqgan",
            "embed_dim": vq.codebook_embed_dim,
            "num_embeddings": vq.codebook_size,
            "double_latent": False,
            "latent_channels": vq.z_channels,
            "in_channels": 3,
            "out_channels": 3,
            "base_channels": vq.ch,
            "channel_multiplier": list(vq.encoder_ch_mult),
            "num_res_blocks": vq.num_res_blocks,
            "dropout": 0.0,
            "num_patches": grid,
            "projection_dim": d,
            "num_hidden_layers": self.gen_aligner.num_linears,
            "hidden_act": "gelu",
            "image_token_embed_dim": d,
        }
        return {
            "architectures": ["JanusForConditionalGeneration"],
            "model_type": "janus",
            "dtype": dtype,  # transformers 5.x
            "torch_dtype": dtype,  # 4.x
            "tie_word_embeddings": False,
            **({"image_token_id": ids["image_id"]} if "image_id" in ids else {}),
            "text_config": text,
            "vision_config": vision,
            "vq_config": vq_cfg,
        }

    def with_gen_image_size(self, size: int) -> "JanusConfig":
        return dataclasses.replace(self, gen_image_size=int(size))


_TOP_KNOWN = frozenset(
    "aligner_config architectures gen_aligner_config gen_head_config gen_vision_config language_config "
    "model_type torch_dtype transformers_version vision_config _name_or_path gen_image_size".split()
)
_PROJ_KNOWN = frozenset("projector_type depth input_dim n_embed".split())
_HEAD_KNOWN = frozenset("image_token_embed image_token_size n_embed".split())
_GEN_VISION_KNOWN = frozenset("image_token_size n_embed vq_model_args".split())
_VQ_ARGS_KNOWN = frozenset(
    "codebook_size codebook_embed_dim codebook_l2_norm codebook_show_usage commit_loss_beta entropy_loss_ratio "
    "encoder_ch_mult decoder_ch_mult z_channels dropout_p ch num_res_blocks".split()
)


def is_janus_config(d: Any) -> bool:
    """An official Janus config.json (VQ generation path), as opposed to JanusFlow's."""
    return isinstance(d, dict) and "gen_vision_config" in d and "language_config" in d


def is_hf_janus_config(d: Any) -> bool:
    """transformers' `JanusForConditionalGeneration` config (`save_pretrained` layout)."""
    return isinstance(d, dict) and d.get("model_type") == "janus" and "vq_config" in d


def _projector(d: dict, name: str) -> ProjectorConfig:
    p = _section(d, name, ("MlpProjector",))
    _unknown(p, _PROJ_KNOWN, f"config.json {name}.params")
    _require(p, ("input_dim", "n_embed"), f"config.json {name}.params")
    return ProjectorConfig(
        projector_type=str(p.get("projector_type", "linear")),
        input_dim=int(p["input_dim"]),
        n_embed=int(p["n_embed"]),
        depth=int(p.get("depth", 1)),
    )


def _vq(params: dict) -> VQConfig:
    args = params.get("vq_model_args") or {}
    if not isinstance(args, dict):
        raise ConfigError("config.json gen_vision_config.params.vq_model_args must be an object")
    _unknown(args, _VQ_ARGS_KNOWN, "config.json gen_vision_config.params.vq_model_args")
    kw: dict[str, Any] = {}
    for k in ("codebook_size", "codebook_embed_dim", "z_channels", "ch", "num_res_blocks"):
        if k in args:
            kw[k] = int(args[k])
    if "codebook_l2_norm" in args:
        kw["codebook_l2_norm"] = bool(args["codebook_l2_norm"])
    for k in ("encoder_ch_mult", "decoder_ch_mult"):
        if k in args:
            kw[k] = tuple(int(m) for m in args[k])
    if float(args.get("dropout_p", 0.0)) != 0.0:
        raise ConfigError("config.json gen_vision_config: dropout_p != 0 is not supported")
    return VQConfig(**kw)


def from_official_json(d: dict[str, Any], *, gen_image_size: int | None = None) -> JanusConfig:
    """Parse the official Janus `config.json` (as a dict). `gen_image_size` (pixels) defaults to the
    config's `gen_image_size` if present, else the SigLIP image size (384 for the real models: the
    official scripts' `img_size`, 24×24 codes)."""
    llm, siglip = parse_shared(d, _TOP_KNOWN, "vision_config")
    gv = _section(d, "gen_vision_config", ("VQ-16",))
    _unknown(gv, _GEN_VISION_KNOWN, "config.json gen_vision_config.params")
    vq = _vq(gv)
    hp = _section(d, "gen_head_config", ("vision_head",))
    _unknown(hp, _HEAD_KNOWN, "config.json gen_head_config.params")
    _require(hp, ("image_token_embed", "image_token_size", "n_embed"), "config.json gen_head_config.params")
    size = gen_image_size or d.get("gen_image_size") or siglip.image_size
    return JanusConfig(
        llm=llm,
        siglip=siglip,
        aligner=_projector(d, "aligner_config"),
        gen_aligner=_projector(d, "gen_aligner_config"),
        gen_head=GenHeadConfig(
            n_embed=int(hp["n_embed"]),
            image_token_embed=int(hp["image_token_embed"]),
            image_token_size=int(hp["image_token_size"]),
        ),
        vq=vq,
        image_token_size=int(gv.get("image_token_size", vq.codebook_size)),
        gen_embed_dim=int(gv.get("n_embed", vq.codebook_embed_dim)),
        gen_image_size=int(size),
        official=d,
    )


# --- presets: the real architectures (config.json of deepseek-ai/Janus-Pro-1B / -7B) ------------


def _official(d_model: int, layers: int, llm_extra: dict) -> dict:
    def proj(kind, d_in):
        return {"cls": "MlpProjector", "model_type": kind, "params": {"depth": 2, "input_dim": d_in, "n_embed": d_model, "projector_type": "mlp_gelu"}}  # fmt: skip

    return {
        "aligner_config": proj("aligner", 1024),
        "architectures": ["MultiModalityCausalLM"],
        "gen_aligner_config": proj("gen_aligner", 8),
        "gen_head_config": {
            "cls": "vision_head",
            "model_type": "gen_head",
            "params": {"image_token_embed": d_model, "image_token_size": 16384, "n_embed": d_model},
        },
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": {"image_token_size": 16384, "n_embed": 8}},
        "language_config": {
            "max_position_embeddings": 16384,
            "model_type": "llama",
            "num_hidden_layers": layers,
            "torch_dtype": "bfloat16",
            "vocab_size": 102400,
            **llm_extra,
        },
        "model_type": "multi_modality",
        "torch_dtype": "bfloat16",
        "vision_config": {
            "cls": "CLIPVisionTower",
            "model_type": "vision",
            "params": {"image_size": 384, "model_name": "siglip_large_patch16_384", "select_feature": "same", "select_layer": -1},
        },
    }  # fmt: skip


# Janus-Pro-7B's language_config states only these fields; the rest are LlamaConfig defaults.
JANUS_PRO_7B = from_official_json(_official(4096, 30, {}))
JANUS_PRO_1B = from_official_json(
    _official(
        2048, 24, {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 16, "num_key_value_heads": 16}
    )
)
JANUS_1_3B = JANUS_PRO_1B  # same architecture (Janus-1.3B's config.json differs only in bookkeeping fields)
PRESETS = {"janus-pro-1b": JANUS_PRO_1B, "janus-pro-7b": JANUS_PRO_7B, "janus-1.3b": JANUS_1_3B}


# --- transformers' layout (JanusForConditionalGeneration `save_pretrained`) ----------------------
# Sections `text_config` (LlamaConfig), `vision_config` (JanusVisionConfig), `vq_config`
# (JanusVQVAEConfig). Fields a section leaves out take transformers' class defaults (a config saved
# as a diff against them states only what differs). transformers ignores a stored
# `vq_config.num_patches` (JanusConfig sets it to vision image_size // patch_size), and so do we.

_HF_BOOKKEEPING = frozenset(
    {"model_type", "dtype", "torch_dtype", "transformers_version", "initializer_range", "_name_or_path",
     "_attn_implementation_autoset", "architectures"}
)  # fmt: skip
_HF_TOP_KNOWN = _HF_BOOKKEEPING | {"text_config", "vision_config", "vq_config", "image_token_id", "tie_word_embeddings"}
_HF_VISION_DEFAULTS: dict[str, Any] = {  # transformers' JanusVisionConfig
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "num_channels": 3, "image_size": 384,
    "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "attention_dropout": 0.0, "mlp_ratio": 4.0,
    "attention_bias": True, "hidden_dropout_rate": 0.0, "projection_dim": 2048, "projection_dropout": 0.0,
    "use_qk_norm": False, "depth": 2, "num_image_tokens": 576,
}  # fmt: skip
_HF_VQ_DEFAULTS: dict[str, Any] = {  # transformers' JanusVQVAEConfig
    "embed_dim": 8, "num_embeddings": 16384, "double_latent": False, "latent_channels": 256, "in_channels": 3,
    "base_channels": 128, "channel_multiplier": (1, 1, 2, 2, 4), "num_res_blocks": 2, "dropout": 0.0,
    "num_patches": 32, "out_channels": 3, "projection_dim": 2048, "num_hidden_layers": 2, "hidden_act": "gelu",
    "image_token_embed_dim": 2048,
}  # fmt: skip
# transformers' own converter passes `depth=` (the gen-aligner depth) to JanusVQVAEConfig, which
# stores it unused: the model is built from `num_hidden_layers`.
_HF_VQ_UNUSED = frozenset({"depth"})


def _hf_section(d: dict, name: str, defaults: dict, model_type: str, extra: frozenset = frozenset()) -> dict:
    sec = d.get(name, {})
    if sec is None:
        sec = {}
    if not isinstance(sec, dict):
        raise ConfigError(f"config.json {name} must be an object")
    _unknown(sec, frozenset(defaults) | _HF_BOOKKEEPING | extra, f"config.json {name}")
    if sec.get("model_type", model_type) != model_type:
        raise ConfigError(f"config.json {name}.model_type={sec['model_type']!r} is not {model_type!r}")
    return {**defaults, **{k: v for k, v in sec.items() if k in defaults}}


def _square(v: Any, where: str) -> int:
    if isinstance(v, (list, tuple)):
        if len(v) != 2 or int(v[0]) != int(v[1]):
            raise ConfigError(f"{where}={list(v)}: only square sizes are supported")
        v = v[0]
    return int(v)


def _hf_text(d: dict) -> LlamaConfig:
    where = "config.json text_config"
    tc = d.get("text_config")
    if not isinstance(tc, dict):
        raise ConfigError(f"{where} is missing or not an object")
    tc = dict(tc)
    if tc.get("model_type", "llama") != "llama":
        raise ConfigError(f"{where}.model_type={tc['model_type']!r}: only llama text models are supported")
    rp = tc.pop("rope_parameters", None)  # transformers 5.x: {rope_type, rope_theta}
    if rp is not None:
        if not isinstance(rp, dict):
            raise ConfigError(f"{where}.rope_parameters must be an object")
        _unknown(rp, frozenset({"rope_type", "rope_theta"}), f"{where}.rope_parameters")
        if rp.get("rope_type", "default") != "default":
            raise ConfigError(
                f"{where}.rope_parameters.rope_type={rp['rope_type']!r}: only 'default' RoPE is supported"
            )
        if "rope_theta" in rp:
            if tc.get("rope_theta") is not None and float(tc["rope_theta"]) != float(rp["rope_theta"]):
                raise ConfigError(
                    f"{where}: rope_theta {tc['rope_theta']} and rope_parameters.rope_theta {rp['rope_theta']} disagree"
                )
            tc["rope_theta"] = rp["rope_theta"]
    for k in ("dtype", "_attn_implementation_autoset"):  # bookkeeping parse_llama does not list
        tc.pop(k, None)
    if float(tc.get("attention_dropout") or 0.0) != 0.0:
        raise ConfigError(f"{where}: attention_dropout != 0 is not supported")
    return parse_llama(tc, where)


def from_hf_json(d: dict[str, Any]) -> JanusConfig:
    """Parse transformers' `JanusForConditionalGeneration` config.json (as a dict; see
    `is_hf_janus_config`) into the same JanusConfig the official layout gives. Unknown fields in any
    section are a ConfigError naming them. The generated image is `num_patches` (= vision
    image_size // patch_size, the number transformers decodes) codes on a side, so
    `gen_image_size` = num_patches × the VQ downsampling (384 for the real models)."""
    if not isinstance(d, dict):
        raise ConfigError("config.json: top level must be an object")
    _unknown(d, _HF_TOP_KNOWN, "config.json")
    if d.get("model_type") != "janus":
        raise ConfigError(f"config.json: model_type={d.get('model_type')!r} is not 'janus'")
    arch = d.get("architectures")
    if arch is not None and list(arch) != ["JanusForConditionalGeneration"]:
        raise ConfigError(f"config.json: architectures={arch}: only JanusForConditionalGeneration is supported")
    llm = _hf_text(d)
    v = _hf_section(d, "vision_config", _HF_VISION_DEFAULTS, "janus_vision_model")
    q = _hf_section(d, "vq_config", _HF_VQ_DEFAULTS, "janus_vqgan", _HF_VQ_UNUSED)
    hidden = llm.hidden_size

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config.json {msg}")

    for sec, vals in (("vision_config", v), ("vq_config", q)):
        need(vals["hidden_act"] == "gelu", f"{sec}.hidden_act={vals['hidden_act']!r} unsupported (only gelu, exact)")
    for k in ("attention_dropout", "hidden_dropout_rate", "projection_dropout"):
        need(float(v[k]) == 0.0, f"vision_config.{k} != 0 is not supported")
    need(float(q["dropout"]) == 0.0, "vq_config.dropout != 0 is not supported")
    need(int(v["num_channels"]) == 3, f"vision_config.num_channels={v['num_channels']} (only 3)")
    need(bool(v["attention_bias"]), "vision_config.attention_bias=false is not supported (SigLIP has qkv biases)")
    need(not v["use_qk_norm"], "vision_config.use_qk_norm=true is not supported")
    need(not q["double_latent"], "vq_config.double_latent=true is not supported")
    need(int(q["in_channels"]) == 3 and int(q["out_channels"]) == 3, "vq_config in/out_channels must be 3")
    image = _square(v["image_size"], "vision_config.image_size")
    patch = _square(v["patch_size"], "vision_config.patch_size")
    need(image % patch == 0, f"vision_config.image_size={image} is not a multiple of patch_size={patch}")
    grid = image // patch
    n_img = int(v["num_image_tokens"])  # the codes transformers generates; it decodes num_patches² of them
    need(n_img == grid**2, f"vision_config.num_image_tokens={n_img} must be (image_size // patch_size)² = {grid**2}")
    widths = (("vision", v, "projection_dim"), ("vq", q, "projection_dim"), ("vq", q, "image_token_embed_dim"))
    for sec, vals, k in widths:
        need(int(vals[k]) == hidden, f"{sec}_config.{k}={vals[k]} must equal text_config.hidden_size ({hidden})")
    mult = q["channel_multiplier"]
    need(isinstance(mult, (list, tuple)) and len(mult) > 0, f"vq_config.channel_multiplier={mult!r} must be a list")
    mult = tuple(int(m) for m in mult)
    width = int(v["hidden_size"])
    siglip = SiglipConfig(
        image_size=image,
        patch_size=patch,
        width=width,
        depth=int(v["num_hidden_layers"]),
        num_heads=int(v["num_attention_heads"]),
        mlp_dim=int(width * float(v["mlp_ratio"])),
        layer_norm_eps=float(v["layer_norm_eps"]),
    )
    vq = VQConfig(
        codebook_size=int(q["num_embeddings"]),
        codebook_embed_dim=int(q["embed_dim"]),
        encoder_ch_mult=mult,
        decoder_ch_mult=mult,
        z_channels=int(q["latent_channels"]),
        ch=int(q["base_channels"]),
        num_res_blocks=int(q["num_res_blocks"]),
    )
    return JanusConfig(
        llm=llm,
        siglip=siglip,
        aligner=ProjectorConfig(
            projector_type="mlp_gelu", input_dim=width, n_embed=int(v["projection_dim"]), depth=int(v["depth"])
        ),
        # transformers' names: the gen aligner is embed_dim → projection_dim (num_hidden_layers Linears);
        # the head is image_token_embed_dim (its input, the LLM width) → projection_dim → num_embeddings.
        gen_aligner=ProjectorConfig(
            projector_type="mlp_gelu",
            input_dim=vq.codebook_embed_dim,
            n_embed=int(q["projection_dim"]),
            depth=int(q["num_hidden_layers"]),
        ),
        gen_head=GenHeadConfig(
            n_embed=int(q["image_token_embed_dim"]),
            image_token_embed=int(q["projection_dim"]),
            image_token_size=vq.codebook_size,
        ),
        vq=vq,
        image_token_size=vq.codebook_size,
        gen_embed_dim=vq.codebook_embed_dim,
        gen_image_size=grid * vq.downsample_factor,
        official=d,
    )
