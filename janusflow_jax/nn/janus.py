"""Janus (Janus-1.3B, Janus-Pro-1B/7B): the shared LLM and SigLIP tower with a two-layer MLP
understanding aligner, and the VQ generation path (`gen_embed → gen_aligner` in, `gen_head` out,
the LlamaGen VQ-16 tokenizer `gen_vision_model` to and from pixels).

Attribute names mirror the official `MultiModalityCausalLM`, so the weight table maps layouts only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow_jax.janus.config import GenHeadConfig, JanusConfig, ProjectorConfig
from janusflow_jax.nn.layers import Linear, as_dtype, gelu_exact, normal_init, param, splice_image_embeds
from janusflow_jax.nn.llama import LlamaForCausalLM
from janusflow_jax.nn.siglip import CLIPVisionTower
from janusflow_jax.nn.vq import VQModel


class MlpProjector(nnx.Module):
    """Linear(in → D), then (exact GELU, Linear(D → D)) × (depth − 1); torch keys `layers.0`, `layers.2`, …
    are `layers.0`, `layers.1`, … here (no parameter-less modules in the list)."""

    def __init__(self, cfg: ProjectorConfig, *, names_in=("mlp", "embed"), rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        dims = [cfg.input_dim] + [cfg.n_embed] * cfg.num_linears
        self.layers = nnx.List(
            [
                Linear(dims[i], dims[i + 1], names=names_in if i == 0 else ("mlp", "embed"), **kw)
                for i in range(cfg.num_linears)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(gelu_exact(x) if i else x)
        return x


class VisionHead(nnx.Module):
    """Official `vision_head`: `output_mlp_projector` → exact GELU → `vision_head` (image-code logits)."""

    def __init__(self, cfg: GenHeadConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.output_mlp_projector = Linear(cfg.n_embed, cfg.image_token_embed, names=("embed", "mlp"), **kw)
        self.vision_head = Linear(cfg.image_token_embed, cfg.image_token_size, names=("embed", "vocab"), **kw)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """`[..., D]` → float32 logits `[..., K]`."""
        h = gelu_exact(self.output_mlp_projector(hidden))
        w = self.vision_head.kernel[...].astype(h.dtype)
        y = jnp.einsum("...e,ek->...k", h, w, preferred_element_type=jnp.float32)
        return y + self.vision_head.bias[...].astype(jnp.float32)


class GenEmbed(nnx.Module):
    """`nn.Embedding(image_token_size, n_embed)`: a learned table of its own (not the VQ codebook)."""

    def __init__(self, rows: int, dim: int, *, param_dtype: str, rngs: nnx.Rngs):
        self.embedding = param(rngs, normal_init(1.0), (rows, dim), param_dtype, (None, None))

    def __call__(self, codes: jax.Array, dtype) -> jax.Array:
        return jnp.take(self.embedding[...], codes, axis=0).astype(dtype)


class Janus(nnx.Module):
    def __init__(self, cfg: JanusConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.vision_model = CLIPVisionTower(cfg.siglip, rngs=rngs)
        self.aligner = MlpProjector(cfg.aligner, rngs=rngs)
        self.gen_vision_model = VQModel(cfg.vq, rngs=rngs)
        self.gen_aligner = MlpProjector(cfg.gen_aligner, names_in=(None, "embed"), rngs=rngs)
        self.gen_head = VisionHead(cfg.gen_head, rngs=rngs)
        self.gen_embed = GenEmbed(cfg.image_token_size, cfg.gen_embed_dim, param_dtype=cfg.llm.param_dtype, rngs=rngs)
        self.language_model = LlamaForCausalLM(cfg.llm, rngs=rngs)

    @property
    def dtype(self):
        return as_dtype(self.cfg.llm.dtype)

    # --- understanding -------------------------------------------------------------------------

    def image_embeds(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values `[B, n, H, W, 3]` → `[B, n·P, D]`: `aligner(siglip(image))` per image."""
        b, n = pixel_values.shape[:2]
        feats = self.vision_model(pixel_values.reshape((b * n,) + pixel_values.shape[2:]))
        emb = self.aligner(feats.astype(self.dtype))
        return emb.reshape(b, n * emb.shape[1], emb.shape[2])

    def prepare_inputs_embeds(self, input_ids, pixel_values, images_seq_mask, images_emb_mask) -> jax.Array:
        """Token embeddings with the `<image_placeholder>` slots replaced by aligned SigLIP features
        (`<begin_of_image>` / `<end_of_image>` keep their word embeddings)."""
        ids = jnp.where(input_ids < 0, 0, input_ids)
        text = self.language_model.embed(ids)
        return splice_image_embeds(text, self.image_embeds(pixel_values), images_seq_mask, images_emb_mask)

    # --- generation ----------------------------------------------------------------------------

    def gen_image_embeds(self, codes: jax.Array) -> jax.Array:
        """Image codes `[...]` int → LLM inputs `[..., D]` (`gen_aligner(gen_embed(codes))`)."""
        return self.gen_aligner(self.gen_embed(codes, self.dtype)).astype(self.dtype)

    def gen_head_logits(self, hidden: jax.Array) -> jax.Array:
        """LLM hidden states (after the final norm) `[..., D]` → float32 image-code logits `[..., K]`."""
        return self.gen_head(hidden.astype(self.dtype))
