"""The `vq` task: train a LlamaGen-style VQ image tokenizer (the image codes of a Janus) on images
alone, for worlds no pretrained tokenizer fits (LlamaGen, arXiv 2406.06525 §2.1).

Forward: z = quant_conv(encoder(x)), l2-normalised (and so is the codebook) when
`codebook_l2_norm`; code = nearest codebook row; z_q = that row; the decoder reads
z + sg(z_q − z) (straight-through). Loss parts, each a sum over the global batch over its count:
  l2 (and optional l1, edge)  reconstruction of x in [-1, 1]
  codebook                    ‖z_q − sg(z)‖²   (moves the codebook to the encoder)
  commit                      ‖sg(z_q) − z‖²   × β = `loss.vq.commit_weight` (LlamaGen 0.25)
Codebook usage: the fraction of rows chosen at least once in the step's batch, and the perplexity
exp(H) of the code histogram (both over the global batch: the histogram is a sum over shards).
Not implemented: LlamaGen's entropy term (0 in its VQ-16 recipe), perceptual and adversarial terms.

`model.vq_config` is a JSON of `janusflow_jax.config.VQConfig` fields (official `vq_model_args`
names) plus "image_size", the training image side. The export is a params checkpoint
{"vq": ...} with metadata kind "vq"; a Janus trains on it with `model.vq_from`.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow_jax import checkpoint, images
from janusflow_jax.config import ConfigError, VQConfig
from janusflow_jax.nn.vq import VQModel, l2_normalize, nearest_codes
from janusflow_jax.training.config import VqLoss
from janusflow_jax.training.state import TrainConfigError
from janusflow_jax.training.tasks import base
from janusflow_jax.training.tasks.base import Objective, need, to_unit
from janusflow_jax.training.tasks.vae import edge_counts, edge_sums, to_uint8


class VqModules(nnx.Module):
    def __init__(self, cfg: VQConfig, *, rngs: nnx.Rngs):
        self.vq = VQModel(cfg, rngs=rngs)


def quantize(vq: VQModel, z: jax.Array):
    """(z as the quantizer sees it, z_q, codes) — float32, z and the codebook l2-normalised if configured."""
    z = z.astype(jnp.float32)
    if vq.cfg.codebook_l2_norm:
        z = l2_normalize(z)
    e = vq.quantize.codebook()
    codes = nearest_codes(jax.lax.stop_gradient(z), jax.lax.stop_gradient(e))
    return z, jnp.take(e, codes, axis=0), codes


def forward(vq: VQModel, x: jax.Array):
    """images in [-1, 1] → (reconstruction float32, z, z_q, codes)."""
    z, zq, codes = quantize(vq, vq.encode(x))
    rec = vq.decode(z + jax.lax.stop_gradient(zq - z)).astype(jnp.float32)
    return rec, z, zq, codes


@dataclasses.dataclass(frozen=True)
class VqObjective(Objective):
    loss: VqLoss
    grid: int
    embed_dim: int
    codebook_size: int

    def counts(self, batch):
        b, h, w, c = batch["gen"]["image"].shape
        pix, lat = jnp.float32(b * h * w * c), jnp.float32(b * self.grid * self.grid * self.embed_dim)
        eh, ew = edge_counts(b, h, w, c)
        return {"l1": pix, "l2": pix, "edge_h": jnp.float32(eh), "edge_w": jnp.float32(ew), "codebook": lat,
                "commit": lat}  # fmt: skip

    def loss_sums(self, model: VqModules, batch, d):
        x = to_unit(batch["gen"]["image"])
        rec, z, zq, codes = forward(model.vq, x)
        diff = rec - x
        eh, ew = edge_sums(rec, x)
        hist = jnp.zeros((self.codebook_size,), jnp.float32).at[codes.reshape(-1)].add(1.0)
        return {"l1": jnp.sum(jnp.abs(diff)), "l2": jnp.sum(jnp.square(diff)), "edge_h": eh, "edge_w": ew,
                "codebook": jnp.sum(jnp.square(zq - jax.lax.stop_gradient(z))),
                "commit": jnp.sum(jnp.square(jax.lax.stop_gradient(zq) - z)), "hist": hist}  # fmt: skip

    def parts(self, sums, denom):
        m = {k: sums[k] / denom[k] for k in ("l1", "l2", "codebook", "commit")}
        m["edge"] = sums["edge_h"] / denom["edge_h"] + sums["edge_w"] / denom["edge_w"]
        return m

    def total(self, sums, denom):
        m, w = self.parts(sums, denom), self.loss
        return (w.l1_weight * m["l1"] + w.l2_weight * m["l2"] + w.edge_weight * m["edge"]
                + w.codebook_weight * m["codebook"] + w.commit_weight * m["commit"])  # fmt: skip

    def metrics(self, sums, denom):
        m = self.parts(sums, denom)
        hist = sums["hist"]
        p = hist / jnp.maximum(jnp.sum(hist), 1.0)
        m["usage"] = jnp.mean((hist > 0).astype(jnp.float32))
        m["perplexity"] = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))
        return m


def read_vq_config(path: str) -> tuple[VQConfig, int]:
    """(VQConfig, image size) from a JSON of VQConfig fields + "image_size"; unknown fields are errors."""
    from janusflow_jax import config as C

    d = dict(C.read_json(path))
    size = d.pop("image_size", None)
    need(isinstance(size, int) and size > 0, f'{path}: give "image_size" (the training image side, pixels)')
    known = {f.name for f in dataclasses.fields(VQConfig)} - {"dtype", "param_dtype"}
    unknown = sorted(set(d) - known)
    need(
        not unknown,
        f"{path}: unknown VQ config field {unknown[0] if unknown else ''!r}; known: {', '.join(sorted(known))}",
    )
    for k in ("encoder_ch_mult", "decoder_ch_mult"):
        if k in d:
            d[k] = tuple(d[k])
    try:
        cfg = VQConfig(**d)
    except (ConfigError, TypeError) as e:
        raise TrainConfigError(f"{path}: {e}") from None
    need(size % cfg.downsample_factor == 0, f"{path}: image_size {size} is not a multiple of {cfg.downsample_factor}")
    return cfg, size


def vq_config_json(cfg: VQConfig, image_size: int) -> dict:
    d = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(VQConfig) if f.name not in ("dtype", "param_dtype")}
    return json.loads(json.dumps(d)) | {"image_size": int(image_size)}


def load_vq(path: str, *, mesh=None) -> tuple[VQConfig, dict]:
    """(VQConfig, params) of a `vq`-task export."""
    from janusflow_jax.base import restore_target
    from janusflow_jax.sharding import make_mesh, use_mesh

    meta = checkpoint.read_metadata(path)
    if meta.get("kind") != "vq":
        raise TrainConfigError(f"{path}: not a VQ tokenizer export (kind {meta.get('kind')!r})")
    d = dict(meta["vq_config"])
    d.pop("image_size", None)
    cfg = VQConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    mesh = mesh if mesh is not None else make_mesh()
    with use_mesh(mesh):
        abstract = nnx.eval_shape(lambda: VQModel(cfg, rngs=nnx.Rngs(0)))
    return cfg, checkpoint.restore_params(path, {"vq": restore_target(abstract, mesh)})["vq"]


class VqTask(base.Task):
    name = "vq"
    stages = {"all": ("vq",)}
    default_stage = "all"
    data_kinds = ("gen",)
    loss_keys = ("loss", "l2", "l1", "edge", "codebook", "commit")

    @classmethod
    def check_model(cls, m):
        need(bool(m.init_from or m.vq_config),
             "task vq: give model.vq_config (a JSON of VQ config fields + image_size) or model.init_from")  # fmt: skip

    def __init__(self, cfg, mesh, *, weights: bool = True, log=print):
        self.cfg, self.mesh, self.loaded = cfg, mesh, {}
        m = cfg.model
        if m.init_from:
            meta = checkpoint.read_metadata(m.init_from) if checkpoint.is_checkpoint(m.init_from) else {}
            need(meta.get("kind") == "vq", f"model.init_from {m.init_from}: not a vq-task export")
            vq_cfg = VQConfig(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in meta["vq_config"].items() if k != "image_size"})  # fmt: skip
            size = int(meta["vq_config"]["image_size"])
            if weights:
                self.loaded[("vq",)] = load_vq(m.init_from, mesh=mesh)[1]
        else:
            vq_cfg, size = read_vq_config(m.vq_config)
        self.vq_cfg = dataclasses.replace(vq_cfg, dtype=m.dtype, param_dtype="float32")
        self.gen_image_size = size
        self.processor, self.processor_dir = None, None  # images only: no tokenizer
        grid = size // vq_cfg.downsample_factor
        self._objective = VqObjective(cfg.loss.vq, grid, vq_cfg.codebook_embed_dim, vq_cfg.codebook_size)

    def make_modules(self, seed):
        return VqModules(self.vq_cfg, rngs=nnx.Rngs(seed))

    def trainable(self, names):
        return True

    def objective(self):
        return self._objective

    def model_flops_per_step(self, d):
        """3 × the forward FLOPs (XLA's count of encode → quantize → decode for one image) × images."""
        from janusflow_jax.sharding import use_mesh

        s = self.gen_image_size
        with use_mesh(self.mesh):  # the Params carry logical shardings: creating them needs a mesh
            modules = nnx.eval_shape(lambda: self.make_modules(0))
            gd, st = nnx.split(modules, nnx.Param)
            x = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
            cost = jax.jit(lambda p, x: forward(nnx.merge(gd, p).vq, x)[0]).lower(st, x).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return 3.0 * float((cost or {}).get("flops", 0.0)) * d.mix.gen

    def tokens_per_step(self, d):
        return d.mix.gen * self._objective.grid**2  # image codes

    def write_samples(self, run, params, step):
        if run.pc > 1:
            return None
        imgs = run.probe_images(1)[:8]
        vq = nnx.merge(run.graphdef, params).vq
        rec = np.asarray(jax.jit(lambda v, x: to_uint8(forward(v, to_unit(x))[0]))(vq, jnp.asarray(imgs)))
        grid = images.make_grid(np.concatenate([imgs, rec]), cols=len(imgs))
        return run.save_sample_grid(
            f"recon_{step:07d}.png", grid, step, what="reconstructions (top: input, bottom: output)"
        )

    def export(self, run, params, step, dest, ema):
        host = base.host_tree({"vq": params["vq"]})
        meta = {"kind": "vq", "vq_config": vq_config_json(self.vq_cfg, self.gen_image_size), "dtype": "float32",
                "trained_steps": int(step), "ema": bool(ema), "num_params": base.num_params(host)}  # fmt: skip
        checkpoint.save_params(dest, host, meta, overwrite=True)
        return dest
