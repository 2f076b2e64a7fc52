"""Janus checkpoint tables: the official layout (`MultiModalityCausalLM.state_dict()`, as in
deepseek-ai/Janus-1.3B, Janus-Pro-1B/7B), built from the shared LLM / SigLIP / VQ tables stamped onto
the family's prefixes. See `janusflow_jax/weights.py` for the rule language."""

from __future__ import annotations

from janusflow_jax import weights as w
from janusflow_jax.janus.config import JanusConfig, ProjectorConfig
from janusflow_jax.weights import Rule

__all__ = ["official_rules", "OFFICIAL_IGNORED"]

_SIG = "vision_model.vision_tower."


def projector_rules(torch_prefix: str, jax_prefix: str, cfg: ProjectorConfig) -> tuple[Rule, ...]:
    """MlpProjector: torch `layers.{0,2,4,…}` (Linear, GELU, Linear, …) → `layers.{0,1,2,…}`."""
    p = torch_prefix.replace(".", r"\.")
    out = []
    for i in range(cfg.num_linears):
        t = 0 if cfg.projector_type == "linear" else 2 * i
        src = f"{p}layers\\.{t}\\." if cfg.projector_type == "mlp_gelu" else f"{p}layers\\."
        out += [
            Rule(src + r"weight", f"{jax_prefix}.layers.{i}.kernel", "linear"),
            Rule(src + r"bias", f"{jax_prefix}.layers.{i}.bias"),
        ]
    return tuple(out)


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
