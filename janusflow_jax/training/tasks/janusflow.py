"""The `janusflow` task: JanusFlow's three-stage recipe (arXiv 2411.07975 §3.3).

Losses (each a sum over the global batch over its global count):
  rf    rectified flow in VAE latents: z_t = t·x + (1−t)·z0, target x − z0, logit-normal t; the prompt
        dropped to the sampler's unconditional form with probability `loss.cfg_dropout`
  repa  REPA: cosine of an MLP of layer-k image-token states to stop-gradient SigLIP features
  und   next-token cross-entropy on answer tokens of understanding rows (image spliced in)
  text  next-token cross-entropy of text rows

Batch layout (janusflow_jax/data/pipeline.py):
  gen:  prompt_ids / prompt_mask `[b, Lp]` (left-padded, ending with the image start tag), image uint8 `[b,S,S,3]`
  und:  ids / mask / loss_mask `[b, Lu]` (right-padded), pixel_values `[b,S',S',3]`, images_seq_mask `[b, Lu]`
  text: ids / mask / loss_mask `[b, Lt]`
The step's random draws (flow times, noise, dropout) are made once for the whole global batch, so
gradient accumulation and any sharding see the same numbers.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow_jax import checkpoint, flops, images
from janusflow_jax.config import JanusFlowConfig, VaeConfig
from janusflow_jax.nn.janusflow import JanusFlow
from janusflow_jax.nn.layers import Linear
from janusflow_jax.nn.llama import positions_from_mask
from janusflow_jax.nn.vae import AutoencoderKL
from janusflow_jax.training import losses
from janusflow_jax.training.config import FlowLoss, RepaLoss
from janusflow_jax.training.tasks import base
from janusflow_jax.training.state import TrainConfigError
from janusflow_jax.training.tasks.base import Objective, need

SIGLIP = ("vision_und_enc_model",)
LLM = ("language_model",)
NEW_MODULES = (
    "vision_und_enc_aligner",
    "beg_of_und_embed",
    "vision_gen_enc_model",
    "vision_gen_enc_aligner",
    "vision_gen_dec_model",
    "vision_gen_dec_aligner_norm",
    "vision_gen_dec_aligner",
)


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
    """Everything a JanusFlow step touches: JanusFlow, the (always frozen) VAE and the REPA head."""

    def __init__(self, cfg: JanusFlowConfig, vae_cfg: VaeConfig, repa: RepaLoss, *, rngs: nnx.Rngs):
        self.janusflow = JanusFlow(cfg, rngs=rngs)
        self.vae = AutoencoderKL(vae_cfg, rngs=rngs)
        self.repa = (
            RepaHead(
                cfg.llm.hidden_size,
                repa.hidden,
                cfg.siglip.width,
                dtype=cfg.llm.dtype,
                param_dtype=cfg.llm.param_dtype,
                rngs=rngs,
            )  # fmt: skip
            if repa.weight > 0
            else None
        )


@dataclasses.dataclass(frozen=True)
class JanusFlowObjective(Objective):
    flow: FlowLoss
    repa: RepaLoss
    gen_weight: float
    und_weight: float
    text_weight: float
    cfg_dropout: float
    latent_shape: tuple[int, int, int]
    num_gen_tokens: int
    und_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # SigLIP input normalisation (the processor's)
    und_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    und_image_size: int = 384

    def weights(self):
        return {"rf": self.gen_weight, "repa": self.repa.weight, "und": self.und_weight, "text": self.text_weight}

    def draw(self, key, batch):
        """The generation rows' random numbers: t `[b]`, noise z0, posterior eps, dropout."""
        if "gen" not in batch:
            return {}
        b = batch["gen"]["prompt_ids"].shape[0]
        f = self.flow
        kt, kz, ke, kd = jax.random.split(key, 4)
        return {
            "t": losses.sample_t(kt, b, kind=f.t_dist, mean=f.t_mean, std=f.t_std),
            "z0": jax.random.normal(kz, (b,) + self.latent_shape, jnp.float32),
            "eps": jax.random.normal(ke, (b,) + self.latent_shape, jnp.float32),
            "drop": jax.random.bernoulli(kd, self.cfg_dropout, (b,)),
        }

    def counts(self, batch):
        out = {}
        if "gen" in batch:
            b = batch["gen"]["prompt_ids"].shape[0]
            out["rf"] = jnp.float32(b * self.latent_shape[0] * self.latent_shape[1] * self.latent_shape[2])
            out["repa"] = jnp.float32(b * self.num_gen_tokens)
        return out | base.lm_counts(batch)

    def loss_sums(self, model: TrainModules, batch, d):
        sums = {}
        if "gen" in batch:
            sums["rf"], sums["repa"] = gen_loss(model, batch["gen"], d, self)
        slots = model.janusflow.cfg.siglip.num_patches + 1  # + beg_of_und_embed
        return sums | base.lm_sums(model.janusflow, batch, slots)


def encode_latents(vae: AutoencoderKL, images_u8: jax.Array, eps: jax.Array | None) -> jax.Array:
    """uint8 images → scaled VAE latents (frozen: no gradient), float32."""
    mean, logvar = vae.encode(base.to_unit(images_u8).astype(jnp.dtype(vae.cfg.dtype)))
    z = mean.astype(jnp.float32)
    if eps is not None:
        z = z + jnp.exp(0.5 * logvar.astype(jnp.float32)) * eps
    shift = vae.cfg.shift_factor or 0.0
    return jax.lax.stop_gradient((z - shift) * vae.cfg.scaling_factor)


def siglip_targets(jf: JanusFlow, images_u8: jax.Array, obj: JanusFlowObjective) -> jax.Array:
    """Stop-gradient SigLIP features `[b, P, width]` of the clean target images (REPA's f_enc)."""
    s = obj.und_image_size
    x = images_u8.astype(jnp.float32)
    if x.shape[1] != s or x.shape[2] != s:
        x = jax.image.resize(x, (x.shape[0], s, s, 3), method="bicubic", antialias=True)
    x = (x / 255.0 - jnp.asarray(obj.und_mean, jnp.float32)) / jnp.asarray(obj.und_std, jnp.float32)
    return jax.lax.stop_gradient(jf.vision_und_enc_model(x).astype(jnp.float32))


def gen_forward(model: TrainModules, gen: dict, d: dict, obj: JanusFlowObjective, *, capture: bool):
    """Predicted and target velocities (and the layer-k image-token states when `capture`) of generation rows.

    The sequence is the inference one: prompt without its final image tag, t_emb, the image tokens; a
    dropped row keeps only BOS visible and the conditional positions (the sampler's unconditional row).
    """
    jf = model.janusflow
    x = encode_latents(model.vae, gen["image"], d["eps"] if obj.flow.vae_sample else None)
    z_t, v_target = losses.rf_pair(x, d["z0"], d["t"])
    ids, mask = gen["prompt_ids"], gen["prompt_mask"].astype(jnp.int32)
    grid = jf.cfg.grid_for_latent(x.shape[1])
    full = jnp.concatenate([mask[:, :-1], jnp.ones((mask.shape[0], 1 + grid * grid), jnp.int32)], axis=1)
    positions = positions_from_mask(full, full.shape)  # the conditional positions, also for dropped rows
    key_mask = losses.drop_condition(mask, d["drop"])[:, :-1]
    prefix = jf.language_model.embed(ids[:, :-1])  # the image start tag is replaced by t_emb
    out = jf.velocity(prefix, key_mask, positions, z_t, d["t"] * 1000.0,
                      capture_layer=obj.repa.layer if capture else None)  # fmt: skip
    v, h = out if capture else (out, None)
    return v, v_target, h, grid


def gen_loss(model: TrainModules, gen: dict, d: dict, obj: JanusFlowObjective):
    """(rf sum, repa sum) of generation rows: rectified flow through encoder → LLM → decoder, + REPA."""
    repa = model.repa is not None
    v, v_target, h, grid = gen_forward(model, gen, d, obj, capture=repa)
    rf = losses.squared_error_sum(v, v_target)[0]
    if not repa:
        return rf, jnp.float32(0.0)
    target = losses.resize_tokens(siglip_targets(model.janusflow, gen["image"], obj), grid)
    return rf, losses.repa_sum(model.repa(h), target)[0]


def architecture(m):
    """(JanusFlowConfig, VaeConfig) of the `model` section without reading weights."""
    from janusflow_jax.plan import train_architecture

    return train_architecture(m)


class JanusFlowTask(base.Task):
    name = "janusflow"
    stages = {"1": NEW_MODULES, "2": NEW_MODULES + LLM, "3": NEW_MODULES + LLM + SIGLIP}
    default_stage = "1"
    data_kinds = ("gen", "und", "text")
    loss_keys = ("loss", "rf", "repa", "und", "text")

    @classmethod
    def check_model(cls, m):
        need(bool(m.init_from or m.config or m.preset),
             "model: give model.init_from, model.config (official config.json) or model.preset")  # fmt: skip

    def __init__(self, cfg, mesh, *, weights: bool = True, log=print):
        from janusflow_jax.model import load, load_vae

        self.cfg, self.mesh = cfg, mesh
        m = cfg.model  # a shipped model's name (init_from=default) is its folder by now (config._resolve_paths)
        self.loaded = {}
        need(not weights or bool(m.init_from or m.vae_from),
             "model: a JanusFlow trained from scratch needs trained VAE weights (model.vae_from)")  # fmt: skip
        t = time.perf_counter()
        loaded = None
        if not weights:
            base_cfg, vae_cfg = architecture(m)
        elif m.init_from:
            loaded = load(m.init_from, vae_path=None, dtype="float32", mesh=mesh)
            base_cfg, vae_cfg = loaded.cfg, loaded.vae_cfg
            self.loaded = {
                ("janusflow",): nnx.to_pure_dict(loaded.params),
                ("vae",): nnx.to_pure_dict(loaded.vae_params),
            }
        else:
            base_cfg = architecture(m)[0]
        if weights and m.vae_from:
            vae_cfg, self.loaded[("vae",)] = load_vae(m.vae_from, mesh=mesh)
        if self.loaded:
            log(f"loaded initial weights ({m.init_from or ''} {m.vae_from or ''}) in {time.perf_counter() - t:.1f}s")
        self.processor, self.processor_dir = base.read_processor(m, m.init_from, "janusflow")
        if self.processor is None and loaded is not None and loaded.processor_dir:
            self.processor, self.processor_dir = base.read_processor(
                dataclasses.replace(m, processor=loaded.processor_dir), None, "janusflow")  # fmt: skip
        if self.processor is None and weights:
            raise TrainConfigError("model.processor: a folder with the tokenizer/processor files is needed")
        self.vae_cfg = dataclasses.replace(vae_cfg, dtype="float32", param_dtype="float32")
        self.model_cfg = base_cfg.with_dtype(m.dtype, param_dtype="float32").with_remat(m.remat, m.scan_layers)
        self.gen_image_size = self.model_cfg.gen_image_size
        self.und_image_size = self.model_cfg.siglip.image_size
        L = self.model_cfg.llm.num_hidden_layers
        r = cfg.loss.repa
        need(r.weight <= 0 or 1 <= r.layer <= L, f"loss.repa.layer must be in 1..{L}")
        side = self.model_cfg.latent_size(self.vae_cfg)
        self.latent_side = side
        self.num_gen_tokens = self.model_cfg.num_gen_tokens(self.vae_cfg)
        norm = base.und_normalisation(self.processor) if self.processor is not None else (
            (0.5,) * 3, (0.5,) * 3, self.und_image_size)  # fmt: skip
        lo = cfg.loss
        self._objective = JanusFlowObjective(
            flow=lo.flow, repa=lo.repa, gen_weight=lo.gen_weight, und_weight=lo.und_weight,
            text_weight=lo.text_weight, cfg_dropout=lo.cfg_dropout,
            latent_shape=(side, side, self.vae_cfg.latent_channels),
            num_gen_tokens=self.model_cfg.num_gen_tokens(self.vae_cfg),
            und_mean=norm[0], und_std=norm[1], und_image_size=norm[2])  # fmt: skip

    def make_modules(self, seed: int):
        return TrainModules(self.model_cfg, self.vae_cfg, self.cfg.loss.repa, rngs=nnx.Rngs(seed))

    def trainable(self, names):
        if names[0] == "repa":  # the REPA head always trains; the VAE never does here
            return True
        return names[0] == "janusflow" and names[1] in self.stages[self.cfg.stage]

    def objective(self):
        return self._objective

    def model_flops_per_step(self, d) -> float:
        """Forward + backward (2× forward) of what the loss flows through, plus the forward of the
        frozen feature extractor (SigLIP for REPA); the VAE encoder is not counted."""
        c, mix = self.model_cfg, d.mix
        fwd_train = base.lm_flops(c.llm, c.siglip, d)
        fwd_frozen = 0.0
        if mix.gen:
            fwd_train += flops.gen_step_flops(c, mix.gen, self.latent_side, d.gen_prompt_len, recompute=True)
            if self.cfg.loss.repa.weight > 0:
                fwd_frozen += flops.siglip_flops(c.siglip, mix.gen)
        return 3.0 * fwd_train + fwd_frozen

    def tokens_per_step(self, d) -> float:
        mix = d.mix
        return (
            mix.gen * (d.gen_prompt_len + self._objective.num_gen_tokens) + mix.und * d.und_len + mix.text * d.text_len
        )

    def sampling_model(self, run, params):
        """A `JanusFlowModel` on `params` (e.g. with EMA) for sample images."""
        from janusflow_jax.model import JanusFlowModel, special_ids

        jf_gd, jf_st = nnx.split(run.abstract.janusflow, nnx.Param)
        vae_gd, vae_st = nnx.split(run.abstract.vae, nnx.Param)
        nnx.replace_by_pure_dict(jf_st, params["janusflow"])
        nnx.replace_by_pure_dict(vae_st, params["vae"])
        return JanusFlowModel(self.model_cfg, self.vae_cfg, jf_gd, jf_st, vae_gd, vae_st, mesh=run.mesh,
                              processor_dir=self.processor_dir, **special_ids(self.processor_dir))  # fmt: skip

    def write_samples(self, run, params, step):
        r = self.cfg.run
        if not r.sample_prompts:
            return None
        model = self.sampling_model(run, params)
        imgs = model.generate_images(list(r.sample_prompts), num_steps=r.sample_steps, cfg_weight=r.sample_cfg, seed=0)
        return run.save_sample_grid(f"step_{step:07d}.png", images.make_grid(np.asarray(imgs)), step)

    def export(self, run, params, step, dest, ema):
        host = base.host_tree({"janusflow": params["janusflow"], "vae": params["vae"]})
        meta = {"family": "janusflow", "config": self.model_cfg.official, "vae_config": self.vae_cfg.to_diffusers(),
                "dtype": "float32", "trained_steps": int(step), "stage": self.cfg.stage, "ema": bool(ema),
                "num_params": base.num_params(host)}  # fmt: skip
        checkpoint.save_params(dest, host, meta, extra_files=processor_files(self.processor_dir), overwrite=True)
        return dest


def processor_files(folder: str | None) -> dict:
    if not folder:
        return {}
    return {n: os.path.join(folder, n) for n in checkpoint.PROCESSOR_FILES if os.path.isfile(os.path.join(folder, n))}
