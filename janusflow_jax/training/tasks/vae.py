"""The `vae` task: train an AutoencoderKL (the SDXL structure at any width) on images alone — the
latent space a JanusFlow of a new world generates in.

Loss per image batch, each part a sum over the global batch over its global count (a mean):
  L1 + L2 reconstruction, + `loss.vae.edge_weight` × L1 of the horizontal and vertical finite
  differences (keeps edges and flat colour regions crisp, which a pixel judge of small images needs),
  + `loss.vae.kl_weight` × KL of the diagonal Gaussian posterior to N(0, I).
The export sets `scaling_factor` = 1 / std of the posterior means over training images (the SD
recipe), so that scaled latents have unit variance for the flow model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow_jax import checkpoint, flops, images
from janusflow_jax import config as config_lib
from janusflow_jax.config import VaeConfig
from janusflow_jax.nn.vae import AutoencoderKL
from janusflow_jax.training.config import VaeLoss
from janusflow_jax.training.tasks import base
from janusflow_jax.training.tasks.base import Objective, need, to_unit


class VaeModules(nnx.Module):
    def __init__(self, cfg: VaeConfig, *, rngs: nnx.Rngs):
        self.vae = AutoencoderKL(cfg, rngs=rngs)


def edge_sums(rec: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sums of |Δrec − Δx| along height and along width (finite differences)."""
    dh = jnp.sum(jnp.abs(jnp.diff(rec, axis=1) - jnp.diff(x, axis=1)))
    dw = jnp.sum(jnp.abs(jnp.diff(rec, axis=2) - jnp.diff(x, axis=2)))
    return dh, dw


def edge_counts(b: int, h: int, w: int, c: int) -> tuple[float, float]:
    return float(b * (h - 1) * w * c), float(b * h * (w - 1) * c)


@dataclasses.dataclass(frozen=True)
class VaeObjective(Objective):
    loss: VaeLoss
    latent_shape: tuple[int, int, int]

    def draw(self, key, batch):
        b = batch["gen"]["image"].shape[0]
        return {"eps": jax.random.normal(key, (b,) + self.latent_shape, jnp.float32)}

    def counts(self, batch):
        b, h, w, c = batch["gen"]["image"].shape
        eh, ew = edge_counts(b, h, w, c)
        return {"l1": jnp.float32(b * h * w * c), "l2": jnp.float32(b * h * w * c), "edge_h": jnp.float32(eh),
                "edge_w": jnp.float32(ew), "kl": jnp.float32(b * np.prod(self.latent_shape))}  # fmt: skip

    def loss_sums(self, model: VaeModules, batch, d):
        x = to_unit(batch["gen"]["image"])
        mean, logvar = model.vae.encode(x)
        mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
        rec = model.vae.decode(mean + jnp.exp(0.5 * logvar) * d["eps"]).astype(jnp.float32)
        diff = rec - x
        eh, ew = edge_sums(rec, x)
        kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
        return {"l1": jnp.sum(jnp.abs(diff)), "l2": jnp.sum(jnp.square(diff)), "edge_h": eh, "edge_w": ew, "kl": kl}

    def total(self, sums, denom):
        m = self.metrics(sums, denom)
        return m["l1"] + m["l2"] + self.loss.edge_weight * m["edge"] + self.loss.kl_weight * m["kl"]

    def metrics(self, sums, denom):
        m = {k: sums[k] / denom[k] for k in ("l1", "l2", "kl")}
        m["edge"] = sums["edge_h"] / denom["edge_h"] + sums["edge_w"] / denom["edge_w"]
        return m


def latent_scale(vae: AutoencoderKL, images_u8: jax.Array) -> jax.Array:
    """1 / std of the posterior means of `images_u8` (one number, over every latent element)."""
    mean, _ = vae.encode(to_unit(images_u8))
    return 1.0 / jnp.std(mean.astype(jnp.float32))


def reconstruct(vae: AutoencoderKL, images_u8: jax.Array) -> jax.Array:
    mean, _ = vae.encode(to_unit(images_u8))
    return to_uint8(vae.decode(mean))


def to_uint8(x: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


class VaeTask(base.Task):
    name = "vae"
    stages = {"all": ("vae",)}
    default_stage = "all"
    data_kinds = ("gen",)
    loss_keys = ("loss", "l1", "l2", "edge", "kl")

    @classmethod
    def check_model(cls, m):
        need(bool(m.init_from or m.vae_config),
             "task vae: give model.vae_config (diffusers config.json) or model.init_from")  # fmt: skip

    def __init__(self, cfg, mesh, *, weights: bool = True, log=print):
        from janusflow_jax.model import load_vae

        self.cfg, self.mesh, self.loaded = cfg, mesh, {}
        m = cfg.model  # a shipped model's name (init_from=default: fine-tune its VAE) is a folder by now
        if m.init_from and weights:
            vae_cfg, self.loaded[("vae",)] = load_vae(m.init_from, mesh=mesh)
        elif m.init_from:
            from janusflow_jax.plan import model_from_folder

            vae_cfg = model_from_folder(m.init_from)[2]
        else:
            vae_cfg = VaeConfig.from_diffusers(config_lib.read_json(m.vae_config))
        self.vae_cfg = dataclasses.replace(vae_cfg, dtype="float32", param_dtype="float32")
        self.processor, self.processor_dir = None, None  # images only: no tokenizer
        self.gen_image_size = int(self.vae_cfg.sample_size)
        lat = self.gen_image_size // self.vae_cfg.downsample_factor
        self._objective = VaeObjective(cfg.loss.vae, (lat, lat, self.vae_cfg.latent_channels))

    def make_modules(self, seed):
        return VaeModules(self.vae_cfg, rngs=nnx.Rngs(seed))

    def trainable(self, names):
        return True

    def objective(self):
        return self._objective

    def model_flops_per_step(self, d):
        lat = self._objective.latent_shape[0]
        enc_dec = 2 * flops.vae_decode_flops(self.vae_cfg, lat, d.mix.gen)  # encoder ≈ decoder
        return 3.0 * enc_dec

    def tokens_per_step(self, d):
        lat = self._objective.latent_shape[0]
        return d.mix.gen * lat * lat  # latent positions

    def write_samples(self, run, params, step):
        if run.pc > 1:
            return None
        imgs = run.probe_images(1)[:8]
        vae = nnx.merge(run.graphdef, params).vae
        rec = np.asarray(jax.jit(reconstruct)(vae, jnp.asarray(imgs)))
        grid = images.make_grid(np.concatenate([imgs, rec]), cols=len(imgs))
        return run.save_sample_grid(
            f"recon_{step:07d}.png", grid, step, what="reconstructions (top: input, bottom: output)"
        )

    def export(self, run, params, step, dest, ema):
        vae = nnx.merge(run.graphdef, params).vae
        scale = float(jax.jit(latent_scale)(vae, jnp.asarray(run.probe_images())))
        vae_cfg = dataclasses.replace(self.vae_cfg, scaling_factor=scale)
        host = base.host_tree({"vae": params["vae"]})
        meta = {"kind": "vae", "vae_config": vae_cfg.to_diffusers(), "dtype": "float32", "trained_steps": int(step),
                "ema": bool(ema), "num_params": base.num_params(host)}  # fmt: skip
        checkpoint.save_params(dest, host, meta, overwrite=True)
        run.log(f"the VAE's scaling_factor: {scale:.5f} (1/std of the latents)")
        return dest
