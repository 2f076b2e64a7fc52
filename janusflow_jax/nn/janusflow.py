"""JanusFlow: the LLM with the understanding encoder, generation encoder/decoder and their aligners.

All methods are pure functions of the parameters and their inputs. Images and latents are
channels-last. `t1000` is the flow time scaled by 1000 (the official model's convention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow_jax.config import JanusFlowConfig
from janusflow_jax.nn.kv_cache import KVCache
from janusflow_jax.nn.layers import Linear, RMSNorm, as_dtype, normal_init, param, splice_image_embeds
from janusflow_jax.nn.llama import LlamaForCausalLM
from janusflow_jax.nn.siglip import CLIPVisionTower
from janusflow_jax.nn.uvit import ShallowUViTDecoder, ShallowUViTEncoder


class JanusFlow(nnx.Module):
    def __init__(self, cfg: JanusFlowConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.llm.hidden_size
        kw = dict(dtype=cfg.llm.dtype, param_dtype=cfg.llm.param_dtype, rngs=rngs)
        self.vision_und_enc_model = CLIPVisionTower(cfg.siglip, rngs=rngs)
        self.vision_und_enc_aligner = Linear(*cfg.und_aligner_dims, names=("mlp", "embed"), **kw)
        self.beg_of_und_embed = param(rngs, normal_init(0.02), (1, d), cfg.llm.param_dtype, (None, "embed"))
        self.vision_gen_enc_model = ShallowUViTEncoder(cfg.gen_enc, rngs=rngs)
        self.vision_gen_enc_aligner = Linear(*cfg.gen_enc_aligner_dims, names=("mlp", "embed"), **kw)
        self.vision_gen_dec_model = ShallowUViTDecoder(cfg.gen_dec, rngs=rngs)
        self.language_model = LlamaForCausalLM(cfg.llm, rngs=rngs)
        self.vision_gen_dec_aligner_norm = RMSNorm(d, eps=cfg.llm.rms_norm_eps, param_dtype=cfg.llm.param_dtype)
        self.vision_gen_dec_aligner = Linear(*cfg.gen_dec_aligner_dims, names=("embed", "mlp"), **kw)

    @property
    def dtype(self):
        return as_dtype(self.cfg.llm.dtype)

    # --- understanding -------------------------------------------------------------------------

    def image_embeds(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values `[B, n, H, W, 3]` → `[B, n·(1+P), D]`: per image, BOI embed then P aligned features."""
        b, n = pixel_values.shape[:2]
        feats = self.vision_und_enc_model(pixel_values.reshape((b * n,) + pixel_values.shape[2:]))
        feats = self.vision_und_enc_aligner(feats.astype(self.dtype))
        boi = jnp.broadcast_to(self.beg_of_und_embed[...].astype(self.dtype)[None], (b * n, 1, feats.shape[-1]))
        emb = jnp.concatenate([boi, feats], axis=1)
        return emb.reshape(b, n * emb.shape[1], emb.shape[2])

    def prepare_inputs_embeds(self, input_ids, pixel_values, images_seq_mask, images_emb_mask) -> jax.Array:
        """Token embeddings with image slots overwritten, as the official `prepare_inputs_embeds`.

        The k-th True slot of `images_seq_mask` (row-major over the whole batch) receives the k-th
        True entry of `images_emb_mask` `[B, n, 1+P]` (likewise row-major).
        """
        ids = jnp.where(input_ids < 0, 0, input_ids)
        text = self.language_model.embed(ids)
        return splice_image_embeds(text, self.image_embeds(pixel_values), images_seq_mask, images_emb_mask)

    # --- generation ----------------------------------------------------------------------------

    def gen_encode(self, z: jax.Array, t1000: jax.Array):
        """z `[B,H,W,4]`, t1000 `[B]` → `(x_emb [B,h,w,C], t_emb [B,D], skip [B,h,w,C])`."""
        return self.vision_gen_enc_model(z, t1000)

    def gen_tokens(self, x_emb: jax.Array) -> jax.Array:
        """`[B,h,w,C]` → LLM input tokens `[B, h·w, D]` (row-major, w fastest)."""
        b, h, w, c = x_emb.shape
        return self.vision_gen_enc_aligner(x_emb.reshape(b, h * w, c))

    def gen_decoder_input(self, hidden: jax.Array, grid: int) -> jax.Array:
        """Last-layer hidden states of the image tokens `[B, N, D]` → decoder input `[B, g, g, C]`."""
        x = self.vision_gen_dec_aligner(self.vision_gen_dec_aligner_norm(hidden))
        return x.reshape(x.shape[0], grid, grid, x.shape[-1])

    def gen_decode(self, x: jax.Array, skip: jax.Array, t_emb: jax.Array) -> jax.Array:
        return self.vision_gen_dec_model(x, skip, t_emb)

    def velocity(
        self,
        prefix_embeds: jax.Array,
        prefix_mask: jax.Array,
        positions: jax.Array,
        z: jax.Array,
        t1000: jax.Array,
        cache: KVCache | None = None,
        *,
        capture_layer: int | None = None,
    ):
        """Velocity of each row for latents z `[R,H,W,4]` at time t1000 `[R]`.

        Without a cache, `prefix_embeds` `[R,P,D]` (the prompt without its last tag token) and
        `prefix_mask` `[R,P]` are recomputed (the official behaviour); with `cache` holding that
        prefix (read-only), only `[t_emb, image tokens]` run through the LLM. `positions` `[R, P+1+N]` are the
        RoPE positions of the prefix, the t_emb token and the image tokens.

        With `capture_layer=k` (training, REPA) returns `(v, layer-k states of the image tokens [R,N,D])`.
        """
        x_emb, t_emb, skip = self.gen_encode(z, t1000)
        tokens = self.gen_tokens(x_emb)
        n = tokens.shape[1]
        new = jnp.concatenate([t_emb[:, None, :].astype(self.dtype), tokens.astype(self.dtype)], axis=1)
        new_mask = jnp.ones(new.shape[:2], jnp.bool_)
        if cache is None:
            embeds = jnp.concatenate([prefix_embeds.astype(self.dtype), new], axis=1)
            mask = jnp.concatenate([prefix_mask.astype(jnp.bool_), new_mask], axis=1)
            llm = self.language_model.model
            if capture_layer is None:
                hidden, captured = llm.forward(embeds, positions, mask).hidden, None
            else:
                out = llm.capture(embeds, positions, mask, capture_layer)
                hidden, captured = out.hidden, out.layers
        else:
            out = self.language_model.model.extend(
                new, positions[:, -(n + 1) :], cache, new_mask, capture_layer=capture_layer
            )
            hidden, captured = out.hidden, out.layers
        x = self.gen_decoder_input(hidden[:, -n:], x_emb.shape[1])
        v = self.gen_decode(x, skip, t_emb)
        return v if capture_layer is None else (v, captured[:, -n:])
