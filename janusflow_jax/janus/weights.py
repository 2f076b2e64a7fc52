"""Janus checkpoint tables: the official layout (`MultiModalityCausalLM.state_dict()`, as in
deepseek-ai/Janus-1.3B, Janus-Pro-1B/7B), built from the shared LLM / SigLIP / VQ tables stamped onto
the family's prefixes; and transformers' layout (`JanusForConditionalGeneration.state_dict()`, e.g.
deepseek-community/Janus-Pro-1B), mapped onto the same JAX paths. See `janusflow_jax/weights.py` for
the rule language."""

from __future__ import annotations

import re

from janusflow_jax import weights as w
from janusflow_jax.janus.config import JanusConfig, ProjectorConfig
from janusflow_jax.weights import Rule

__all__ = ["HF_IGNORED", "OFFICIAL_IGNORED", "hf_rules", "official_rules"]

_SIG = "vision_model.vision_tower."


def linear_stack_rules(sources: list[str], jax_prefix: str) -> tuple[Rule, ...]:
    """The i-th torch Linear (escaped key prefix `sources[i]`) → `{jax_prefix}.layers.{i}`."""
    out = []
    for i, src in enumerate(sources):
        out += [
            Rule(src + r"weight", f"{jax_prefix}.layers.{i}.kernel", "linear"),
            Rule(src + r"bias", f"{jax_prefix}.layers.{i}.bias"),
        ]
    return tuple(out)


def projector_rules(torch_prefix: str, jax_prefix: str, cfg: ProjectorConfig) -> tuple[Rule, ...]:
    """Official MlpProjector: `layers` (linear) or `layers.{0,2,4,…}` (Linear, GELU, Linear, …)."""
    p = re.escape(torch_prefix)
    if cfg.projector_type == "linear":
        return linear_stack_rules([p + r"layers\."], jax_prefix)
    return linear_stack_rules([p + rf"layers\.{2 * i}\." for i in range(cfg.num_linears)], jax_prefix)


def official_rules(cfg: JanusConfig) -> tuple[Rule, ...]:
    return (
        *w.stamp(w.LLAMA_RULES, "language_model.", "language_model"),
        *w.stamp(w.SIGLIP_RULES, _SIG, _SIG[:-1]),
        *w.stamp(w.VQ_RULES, "gen_vision_model.", "gen_vision_model"),
        *projector_rules("aligner.", "aligner", cfg.aligner),
        *projector_rules("gen_aligner.", "gen_aligner", cfg.gen_aligner),
        Rule(r"gen_head\.(output_mlp_projector|vision_head)\.weight", "gen_head.{1}.kernel", "linear"),
        Rule(r"gen_head\.(output_mlp_projector|vision_head)\.bias", "gen_head.{1}.bias"),
        Rule(r"gen_embed\.weight", "gen_embed.embedding"),
    )


OFFICIAL_IGNORED: tuple[str, ...] = (
    *w.stamp_ignored(w.SIGLIP_IGNORED, _SIG),
    *w.stamp_ignored(w.LLAMA_IGNORED, "language_model."),
    *w.stamp_ignored(w.VQ_IGNORED, "gen_vision_model."),
)


# --- transformers' layout (JanusForConditionalGeneration) ---------------------------------------
# Same modules, renamed (transformers' convert_janus_weights_to_hf.py MAPPINGS): the LLM under
# `model.language_model.` with `lm_head` at the top; SigLIP under `model.vision_model.` with the fused
# qkv split into q/k/v_proj (filling parts 0/1/2 of the fused leaf), `pos_embed` squeezed to [N, W];
# the VQ under `model.vqmodel.` with `conv_blocks` → `down` / `up` (same index order: `up.0` is the
# deepest level, as our `decoder.conv_blocks.0`), `res` → `block`, `mid.0/1/2` →
# `mid.block_1/attn_1/block_2` (the attention q/k/v/proj_out are 1×1 convs, as in the official
# layout); the MlpProjectors' Linear `layers.0, 2, 4, …` → `fc1, hidden_layers.0, 1, …`.


def _llama_under(torch_prefix: str, rules) -> tuple[Rule, ...]:
    """LLAMA_RULES with their `model.` prefix replaced by `torch_prefix` (lm_head stays at the top)."""
    out = []
    for r in rules:
        pat = re.escape(torch_prefix) + r.pattern[len(r"model\.") :] if r.pattern.startswith(r"model\.") else r.pattern
        out.append(Rule(pat, "language_model." + r.target, r.transform))
    return tuple(out)


_HF_L = r"encoder\.layers\.(\d+)\."
HF_SIGLIP_RULES: tuple[Rule, ...] = (  # relative to `model.vision_model.`, onto the official tower's leaves
    Rule(r"embeddings\.position_embedding\.weight", "pos_embed"),
    Rule(r"embeddings\.patch_embedding\.weight", "patch_embed.proj.kernel", "conv"),
    Rule(r"embeddings\.patch_embedding\.bias", "patch_embed.proj.bias"),
    Rule(_HF_L + r"layer_norm(1|2)\.(weight|bias)", "blocks.*.norm{2}.{3}"),
    *(Rule(_HF_L + rf"self_attn\.{x}_proj\.weight", "blocks.*.attn.qkv", "heads_in", (1, j)) for j, x in enumerate("qkv")),
    *(Rule(_HF_L + rf"self_attn\.{x}_proj\.bias", "blocks.*.attn.qkv_bias", "heads_bias", (0, j)) for j, x in enumerate("qkv")),
    Rule(_HF_L + r"self_attn\.projection_layer\.weight", "blocks.*.attn.proj", "heads_out"),
    Rule(_HF_L + r"self_attn\.projection_layer\.bias", "blocks.*.attn.proj_bias"),
    Rule(_HF_L + r"mlp\.(fc1|fc2)\.weight", "blocks.*.mlp.{2}.kernel", "linear"),
    Rule(_HF_L + r"mlp\.(fc1|fc2)\.bias", "blocks.*.mlp.{2}.bias"),
    Rule(r"post_layernorm\.(weight|bias)", "norm.{1}"),
)  # fmt: skip


def _hf_vq_rules() -> tuple[Rule, ...]:
    """Relative to `model.vqmodel.`, onto the official VQ leaves (`janusflow_jax.nn.vq`)."""
    res = [  # (pattern prefix, target prefix, groups used by the prefix)
        (r"(encoder)\.down\.(\d+)\.block\.(\d+)\.", "{1}.conv_blocks.{2}.res.{3}", 3),
        (r"(decoder)\.up\.(\d+)\.block\.(\d+)\.", "{1}.conv_blocks.{2}.res.{3}", 3),
        (r"(encoder|decoder)\.mid\.block_1\.", "{1}.mid.0", 1),
        (r"(encoder|decoder)\.mid\.block_2\.", "{1}.mid.2", 1),
    ]
    attn = [
        (r"(encoder)\.down\.(\d+)\.attn\.(\d+)\.", "{1}.conv_blocks.{2}.attn.{3}", 3),
        (r"(decoder)\.up\.(\d+)\.attn\.(\d+)\.", "{1}.conv_blocks.{2}.attn.{3}", 3),
        (r"(encoder|decoder)\.mid\.attn_1\.", "{1}.mid.1", 1),
    ]
    out = [
        Rule(r"(encoder|decoder)\.(conv_in|conv_out)\.weight", "{1}.{2}.kernel", "conv"),
        Rule(r"(encoder|decoder)\.(conv_in|conv_out)\.bias", "{1}.{2}.bias"),
        Rule(r"(encoder|decoder)\.norm_out\.(weight|bias)", "{1}.norm_out.{2}"),
        Rule(r"(quant_conv|post_quant_conv)\.weight", "{1}.kernel", "conv"),
        Rule(r"(quant_conv|post_quant_conv)\.bias", "{1}.bias"),
        Rule(r"quantize\.embedding\.weight", "quantize.embedding"),
        Rule(r"encoder\.down\.(\d+)\.downsample\.conv\.weight", "encoder.conv_blocks.{1}.downsample.conv.kernel", "conv"),
        Rule(r"encoder\.down\.(\d+)\.downsample\.conv\.bias", "encoder.conv_blocks.{1}.downsample.conv.bias"),
        Rule(r"decoder\.up\.(\d+)\.upsample\.conv\.weight", "decoder.conv_blocks.{1}.upsample.conv.kernel", "conv"),
        Rule(r"decoder\.up\.(\d+)\.upsample\.conv\.bias", "decoder.conv_blocks.{1}.upsample.conv.bias"),
    ]  # fmt: skip
    for pre, tgt, n in res:
        out += [
            Rule(pre + r"(conv1|conv2|nin_shortcut)\.weight", f"{tgt}.{{{n + 1}}}.kernel", "conv"),
            Rule(pre + r"(conv1|conv2|nin_shortcut)\.bias", f"{tgt}.{{{n + 1}}}.bias"),
            Rule(pre + r"(norm1|norm2)\.(weight|bias)", f"{tgt}.{{{n + 1}}}.{{{n + 2}}}"),
        ]
    for pre, tgt, n in attn:
        out += [
            Rule(pre + r"norm\.(weight|bias)", f"{tgt}.norm.{{{n + 1}}}"),
            Rule(pre + r"(q|k|v|proj_out)\.weight", f"{tgt}.{{{n + 1}}}.kernel", "conv1x1_linear"),
            Rule(pre + r"(q|k|v|proj_out)\.bias", f"{tgt}.{{{n + 1}}}.bias"),
        ]
    return tuple(out)


HF_VQ_RULES: tuple[Rule, ...] = _hf_vq_rules()


def hf_projector_rules(torch_prefix: str, jax_prefix: str, cfg: ProjectorConfig) -> tuple[Rule, ...]:
    """transformers' aligner MLP: `fc1`, `hidden_layers.0, 1, …` → `layers.0, 1, 2, …`."""
    p = re.escape(torch_prefix)
    return linear_stack_rules(
        [p + r"fc1\."] + [p + rf"hidden_layers\.{k}\." for k in range(cfg.num_linears - 1)], jax_prefix
    )


def hf_rules(cfg: JanusConfig) -> tuple[Rule, ...]:
    return (
        *_llama_under("model.language_model.", w.LLAMA_RULES),
        *w.stamp(HF_SIGLIP_RULES, "model.vision_model.", _SIG[:-1]),
        *w.stamp(HF_VQ_RULES, "model.vqmodel.", "gen_vision_model"),
        *hf_projector_rules("model.aligner.", "aligner", cfg.aligner),
        *hf_projector_rules("model.generation_aligner.", "gen_aligner", cfg.gen_aligner),
        Rule(r"model\.generation_head\.proj_out\.weight", "gen_head.output_mlp_projector.kernel", "linear"),
        Rule(r"model\.generation_head\.proj_out\.bias", "gen_head.output_mlp_projector.bias"),
        Rule(r"model\.generation_head\.vision_head\.weight", "gen_head.vision_head.kernel", "linear"),
        Rule(r"model\.generation_head\.vision_head\.bias", "gen_head.vision_head.bias"),
        Rule(r"model\.generation_embeddings\.weight", "gen_embed.embedding"),
    )


# Non-persistent RoPE buffers, should an exporter write them (transformers drops the official
# `attn_pool.*` and `quantize.codebook_used` at conversion, so nothing else is stored unused).
HF_IGNORED: tuple[str, ...] = tuple(
    p.replace(r"model\.", re.escape("model.language_model."), 1) for p in w.LLAMA_IGNORED
)
