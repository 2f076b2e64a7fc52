"""The training forward pass: one batch of the three data kinds → the JanusFlow loss and its parts.

The batch layout is the one `janusflow_jax.data.TrainLoader` produces (see there):
  gen:  prompt_ids / prompt_mask `[b, Lp]` (left-padded, ending with the image start tag), image uint8 `[b,S,S,3]`
  und:  ids / mask / loss_mask `[b, Lu]` (right-padded), pixel_values `[b,S',S',3]`, images_seq_mask `[b, Lu]`
  text: ids / mask / loss_mask `[b, Lt]`
The random draws of a step (flow times, noise, condition dropout) are made once for the whole global
batch by the train step and passed in `draws`, so that gradient accumulation and any sharding see the
same numbers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from janusflow_jax.config import JanusFlowConfig, VaeConfig
from janusflow_jax.nn.janusflow import JanusFlow
from janusflow_jax.nn.layers import Linear
from janusflow_jax.nn.llama import positions_from_mask
from janusflow_jax.nn.vae import AutoencoderKL
from janusflow_jax.training import losses

PARTS = ("rf", "repa", "und", "text")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    t_dist: str = "logit_normal"  # distribution of flow times: logit_normal | uniform
    t_mean: float = 0.0  # logit-normal location
    t_std: float = 1.0  # logit-normal scale
    cfg_dropout: float = 0.1  # probability of replacing a caption by the unconditional form
    repa_layer: int = 6  # LLM layer whose image-token states REPA aligns (paper: 6 of 24)
    repa_weight: float = 1.0  # 0 disables REPA (and its head)
    repa_hidden: int = 2048  # width of the REPA projector h_φ (3-layer SiLU MLP)
    gen_weight: float = 1.0
    und_weight: float = 1.0
    text_weight: float = 1.0
    vae_sample: bool = False  # latents: posterior sample (True) or its mean (False)
    und_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # SigLIP input normalisation (preprocessor)
    und_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    und_image_size: int = 384
    kl_weight: float = 1e-6  # stage vae: KL(posterior ‖ N(0, I)) weight
    edge_weight: float = 0.5  # stage vae: finite-difference (edge) L1 weight


class RepaHead(nnx.Module):
    """h_φ: LLM width → SigLIP width, Linear-SiLU-Linear-SiLU-Linear (REPA's projector)."""

    def __init__(self, d_in: int, hidden: int, d_out: int, *, dtype: str, param_dtype: str, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(d_in, hidden, names=("embed", "mlp"), **kw)
        self.fc2 = Linear(hidden, hidden, names=(None, "mlp"), **kw)
        self.fc3 = Linear(hidden, d_out, names=("mlp", None), **kw)

    def __call__(self, x):
        return self.fc3(jax.nn.silu(self.fc2(jax.nn.silu(self.fc1(x)))))


class TrainModules(nnx.Module):
    """Everything a training step touches: JanusFlow, the (always frozen) VAE and the REPA head."""

    def __init__(self, cfg: JanusFlowConfig, vae_cfg: VaeConfig, ocfg: ObjectiveConfig, *, rngs: nnx.Rngs):
        self.janusflow = JanusFlow(cfg, rngs=rngs)
        self.vae = AutoencoderKL(vae_cfg, rngs=rngs)
        self.repa = (
            RepaHead(
                cfg.llm.hidden_size,
                ocfg.repa_hidden,
                cfg.siglip.width,
                dtype=cfg.llm.dtype,
                param_dtype=cfg.llm.param_dtype,
                rngs=rngs,
            )
            if ocfg.repa_weight > 0
            else None
        )


def draw(key: jax.Array, batch: dict, latent_shape: tuple[int, int, int], ocfg: ObjectiveConfig) -> dict:
    """The step's random numbers for the generation rows: t `[b]`, noise z0, posterior eps, dropout."""
    if "gen" not in batch:
        return {}
    b = batch["gen"]["prompt_ids"].shape[0]
    kt, kz, ke, kd = jax.random.split(key, 4)
    return {
        "t": losses.sample_t(kt, b, kind=ocfg.t_dist, mean=ocfg.t_mean, std=ocfg.t_std),
        "z0": jax.random.normal(kz, (b,) + latent_shape, jnp.float32),
        "eps": jax.random.normal(ke, (b,) + latent_shape, jnp.float32),
        "drop": jax.random.bernoulli(kd, ocfg.cfg_dropout, (b,)),
    }


def counts(batch: dict, latent_shape: tuple[int, int, int], num_tokens: int) -> dict:
    """Denominators of each part over the whole (global) batch; at least 1."""
    out = {}
    if "gen" in batch:
        b = batch["gen"]["prompt_ids"].shape[0]
        out["rf"] = jnp.float32(b * latent_shape[0] * latent_shape[1] * latent_shape[2])
        out["repa"] = jnp.float32(b * num_tokens)
    for kind in ("und", "text"):
        if kind in batch:
            out[kind] = jnp.maximum(jnp.sum(batch[kind]["loss_mask"][:, 1:].astype(jnp.float32)), 1.0)
    return out


def encode_latents(vae: AutoencoderKL, images_u8: jax.Array, eps: jax.Array | None) -> jax.Array:
    """uint8 images → scaled VAE latents (frozen: no gradient), float32."""
    x = images_u8.astype(jnp.float32) / 127.5 - 1.0
    mean, logvar = vae.encode(x.astype(jnp.dtype(vae.cfg.dtype)))
    z = mean.astype(jnp.float32)
    if eps is not None:
        z = z + jnp.exp(0.5 * logvar.astype(jnp.float32)) * eps
    shift = vae.cfg.shift_factor or 0.0
    return jax.lax.stop_gradient((z - shift) * vae.cfg.scaling_factor)


def siglip_targets(jf: JanusFlow, images_u8: jax.Array, ocfg: ObjectiveConfig) -> jax.Array:
    """Stop-gradient SigLIP features `[b, P, width]` of the clean target images (REPA's f_enc)."""
    s = ocfg.und_image_size
    x = images_u8.astype(jnp.float32)
    if x.shape[1] != s or x.shape[2] != s:
        x = jax.image.resize(x, (x.shape[0], s, s, 3), method="bicubic", antialias=True)
    x = (x / 255.0 - jnp.asarray(ocfg.und_mean, jnp.float32)) / jnp.asarray(ocfg.und_std, jnp.float32)
    return jax.lax.stop_gradient(jf.vision_und_enc_model(x).astype(jnp.float32))


def gen_forward(model: TrainModules, gen: dict, d: dict, ocfg: ObjectiveConfig, *, capture: bool):
    """Predicted and target velocities (and the layer-k image-token states when `capture`) of generation rows.

    The sequence is the inference one: prompt without its final image tag, t_emb, the image tokens; a
    dropped row keeps only BOS visible and the conditional positions (the sampler's unconditional row).
    """
    jf = model.janusflow
    x = encode_latents(model.vae, gen["image"], d["eps"] if ocfg.vae_sample else None)
    z_t, v_target = losses.rf_pair(x, d["z0"], d["t"])
    ids, mask = gen["prompt_ids"], gen["prompt_mask"].astype(jnp.int32)
    grid = jf.cfg.grid_for_latent(x.shape[1])
    full = jnp.concatenate([mask[:, :-1], jnp.ones((mask.shape[0], 1 + grid * grid), jnp.int32)], axis=1)
    positions = positions_from_mask(full, full.shape)  # the conditional positions, also for dropped rows
    key_mask = losses.drop_condition(mask, d["drop"])[:, :-1]
    prefix = jf.language_model.embed(ids[:, :-1])  # the image start tag is replaced by t_emb
    out = jf.velocity(
        prefix, key_mask, positions, z_t, d["t"] * 1000.0, capture_layer=ocfg.repa_layer if capture else None
    )
    v, h = out if capture else (out, None)
    return v, v_target, h, grid


def gen_loss(model: TrainModules, gen: dict, d: dict, ocfg: ObjectiveConfig):
    """(rf sum, repa sum) of generation rows: rectified flow through encoder → LLM → decoder, + REPA."""
    repa = model.repa is not None
    v, v_target, h, grid = gen_forward(model, gen, d, ocfg, capture=repa)
    rf = losses.squared_error_sum(v, v_target)[0]
    if not repa:
        return rf, jnp.float32(0.0)
    target = losses.resize_tokens(siglip_targets(model.janusflow, gen["image"], ocfg), grid)
    return rf, losses.repa_sum(model.repa(h), target)[0]


def lm_loss(model: TrainModules, rows: dict, with_images: bool):
    jf = model.janusflow
    ids, mask = rows["ids"], rows["mask"]
    if with_images:
        b = ids.shape[0]
        p = jf.cfg.siglip.num_patches + 1
        emb = jf.prepare_inputs_embeds(
            ids, rows["pixel_values"][:, None], rows["images_seq_mask"], jnp.ones((b, 1, p), jnp.bool_)
        )
    else:
        emb = jf.language_model.embed(ids)
    hidden = jf.language_model.model.forward(emb, positions_from_mask(mask, ids.shape), mask).hidden
    logits = jf.language_model.logits(hidden)
    return losses.next_token_sum(logits, ids, rows["loss_mask"])[0]


def loss_sums(model: TrainModules, batch: dict, d: dict, ocfg: ObjectiveConfig) -> dict:
    """Unnormalised sums of each part present in `batch`."""
    sums = {}
    if "gen" in batch:
        sums["rf"], sums["repa"] = gen_loss(model, batch["gen"], d, ocfg)
    if "und" in batch:
        sums["und"] = lm_loss(model, batch["und"], True)
    if "text" in batch:
        sums["text"] = lm_loss(model, batch["text"], False)
    return sums


def weighted_total(sums: dict, denom: dict, ocfg: ObjectiveConfig) -> jax.Array:
    w = {"rf": ocfg.gen_weight, "repa": ocfg.repa_weight, "und": ocfg.und_weight, "text": ocfg.text_weight}
    return sum(w[k] * sums[k] / denom[k] for k in sums)
