"""The `janus` task: Janus / Janus-Pro training (arXiv 2410.13848, Janus-Pro tech report §2.2).

Losses (each a sum over the global batch over its global count):
  gen   next-code cross-entropy on the image's VQ codes: the sequence is the sampler's — the prompt
        (BOS … `<begin_of_image>`), then `gen_aligner(gen_embed(code))` of codes 0..N−2; the hidden
        state at `<begin_of_image>` predicts code 0 and the one at code i predicts code i+1, through
        `gen_head`. The codes come from the frozen VQ encoder inside the step (like JanusFlow's VAE
        latents). With probability `loss.cfg_dropout` a prompt is replaced by the sampler's
        unconditional row (`janus.generation.unconditional_ids`), which is what CFG needs at sampling.
  und   next-token cross-entropy on answer tokens of understanding rows (SigLIP → aligner spliced in)
  text  next-token cross-entropy of text rows
Stages (Janus-Pro): 1 adaptors + image head (LLM frozen), 2 all but SigLIP and the VQ, 3 also SigLIP.
The VQ tokenizer never trains here (train one with the `vq` task, give it as `model.vq_from`).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow_jax import checkpoint, flops, images
from janusflow_jax.janus import config as janus_config
from janusflow_jax.janus.config import JanusConfig
from janusflow_jax.janus.generation import unconditional_ids
from janusflow_jax.nn.janus import Janus
from janusflow_jax.nn.llama import positions_from_mask
from janusflow_jax.training.state import TrainConfigError
from janusflow_jax.training.tasks import base
from janusflow_jax.training.tasks.base import Objective, need, to_unit

ADAPTORS = ("aligner", "gen_aligner", "gen_head", "gen_embed")
LLM = ("language_model",)
SIGLIP = ("vision_model",)


class TrainModules(nnx.Module):
    """What a Janus step touches: the Janus model (its VQ tokenizer frozen inside it)."""

    def __init__(self, cfg: JanusConfig, *, rngs: nnx.Rngs):
        self.janus = Janus(cfg, rngs=rngs)


def image_codes(model: Janus, images_u8: jax.Array) -> jax.Array:
    """uint8 images `[b,S,S,3]` → the frozen VQ encoder's codes `[b, N]` (row-major grid)."""
    codes = model.gen_vision_model.encode_codes(to_unit(images_u8).astype(model.dtype))
    return jax.lax.stop_gradient(codes.reshape(codes.shape[0], -1))


def code_logits(model: Janus, prompt_ids, prompt_mask, codes) -> jax.Array:
    """Teacher-forced image-code logits `[b, N, K]` (float32) of prompts `[b, Lp]` (left-padded,
    ending with `<begin_of_image>`) followed by `codes` `[b, N]`."""
    b, lp = prompt_ids.shape
    emb = jnp.concatenate([model.language_model.embed(prompt_ids), model.gen_image_embeds(codes[:, :-1])], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.ones((b, codes.shape[1] - 1), jnp.int32)], axis=1)
    hidden = model.language_model.model.forward(emb, positions_from_mask(mask, mask.shape), mask).hidden
    return model.gen_head_logits(hidden[:, lp - 1 :])


def code_ce_sum(logits: jax.Array, codes: jax.Array) -> jax.Array:
    """Σ over rows and positions of −log softmax(logits)[code]."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, codes[..., None], axis=-1)[..., 0]
    return jnp.sum(jax.nn.logsumexp(logits, axis=-1) - picked)


@dataclasses.dataclass(frozen=True)
class JanusObjective(Objective):
    gen_weight: float
    und_weight: float
    text_weight: float
    cfg_dropout: float
    pad_id: int
    num_codes: int
    und_slots: int  # SigLIP embeddings per image (no extra BOU slot in Janus)

    def weights(self):
        return {"gen": self.gen_weight, "und": self.und_weight, "text": self.text_weight}

    def draw(self, key, batch):
        if "gen" not in batch:
            return {}
        b = batch["gen"]["prompt_ids"].shape[0]
        return {"drop": jax.random.bernoulli(key, self.cfg_dropout, (b,))}

    def counts(self, batch):
        out = {}
        if "gen" in batch:
            out["gen"] = jnp.float32(batch["gen"]["prompt_ids"].shape[0] * self.num_codes)
        return out | base.lm_counts(batch)

    def gen_prompt(self, gen: dict, drop: jax.Array) -> jax.Array:
        ids, mask = gen["prompt_ids"], gen["prompt_mask"]
        return jnp.where(drop[:, None], unconditional_ids(ids, mask, self.pad_id), ids)

    def loss_sums(self, model: TrainModules, batch, d):
        jm = model.janus
        sums = {}
        if "gen" in batch:
            g = batch["gen"]
            codes = image_codes(jm, g["image"])
            sums["gen"] = code_ce_sum(code_logits(jm, self.gen_prompt(g, d["drop"]), g["prompt_mask"], codes), codes)
        return sums | base.lm_sums(jm, batch, self.und_slots)


def _vq_params(path: str, cfg: JanusConfig, mesh) -> dict:
    """The VQ tokenizer's params from a `vq`-task export or any Janus folder / checkpoint."""
    from janusflow_jax import checkpoint as ckpt
    from janusflow_jax.training.tasks.vq import load_vq

    if ckpt.is_checkpoint(path) and ckpt.read_metadata(path).get("kind") == "vq":
        vq_cfg, params = load_vq(path, mesh=mesh)
        if dataclasses.replace(vq_cfg, dtype=cfg.vq.dtype, param_dtype=cfg.vq.param_dtype) != cfg.vq:
            raise TrainConfigError(f"model.vq_from {path}: its VQ config {vq_cfg} is not the model's {cfg.vq}")
        return params
    from janusflow_jax.janus.model import load

    return nnx.to_pure_dict(load(path, mesh=mesh).params)["gen_vision_model"]


class JanusTask(base.Task):
    name = "janus"
    stages = {"1": ADAPTORS, "2": ADAPTORS + LLM, "3": ADAPTORS + LLM + SIGLIP}
    default_stage = "1"
    data_kinds = ("gen", "und", "text")
    loss_keys = ("loss", "gen", "und", "text")

    @classmethod
    def check_model(cls, m):
        need(bool(m.init_from or m.config or m.preset),
             "model: give model.init_from (a Janus folder or checkpoint), model.config or model.preset")  # fmt: skip

    def __init__(self, cfg, mesh, *, weights: bool = True, log=print):
        from janusflow_jax.janus.model import load

        self.cfg, self.mesh, self.loaded = cfg, mesh, {}
        m = cfg.model
        need(not weights or bool(m.init_from or m.vq_from),
             "model: a Janus trained from scratch needs trained VQ tokenizer weights (model.vq_from)")  # fmt: skip
        t = time.perf_counter()
        processor_dir = None
        if m.init_from and weights:
            model = load(m.init_from, dtype="float32", mesh=mesh)
            arch, processor_dir = model.cfg, model.processor_dir
            self.loaded[("janus",)] = nnx.to_pure_dict(model.params)
        else:
            arch = architecture(m)
        if m.vq_from and weights:
            self.loaded[("janus", "gen_vision_model")] = _vq_params(m.vq_from, arch, mesh)
        if self.loaded:
            log(f"loaded initial weights ({m.init_from or ''} {m.vq_from or ''}) in {time.perf_counter() - t:.1f}s")
        self.processor, self.processor_dir = base.read_processor(m, processor_dir or m.init_from, "janus")
        if self.processor is None and weights:
            raise TrainConfigError("model.processor: a folder with the tokenizer/processor files is needed")
        self.model_cfg = arch.with_dtype(m.dtype, param_dtype="float32").with_remat(m.remat, m.scan_layers)
        self.gen_image_size = self.model_cfg.gen_image_size
        self.und_image_size = self.model_cfg.siglip.image_size
        self.num_gen_tokens = self.model_cfg.num_gen_tokens
        pad = self.processor.pad_id if self.processor is not None else 0
        lo = cfg.loss
        self._objective = JanusObjective(gen_weight=lo.gen_weight, und_weight=lo.und_weight,
                                         text_weight=lo.text_weight, cfg_dropout=lo.cfg_dropout, pad_id=int(pad),
                                         num_codes=self.model_cfg.num_gen_tokens,
                                         und_slots=self.model_cfg.siglip.num_patches)  # fmt: skip

    def make_modules(self, seed):
        return TrainModules(self.model_cfg, rngs=nnx.Rngs(seed))

    def trainable(self, names):
        return names[0] == "janus" and names[1] in self.stages[self.cfg.stage]

    def objective(self):
        return self._objective

    def model_flops_per_step(self, d):
        """Forward + backward of the LLM, adaptors and heads; the frozen VQ encoder is not counted."""
        c, g = self.model_cfg, d.mix.gen
        fwd = base.lm_flops(c.llm, c.siglip, d)
        if g:
            n = c.num_gen_tokens
            fwd += flops.llm_flops(c.llm, g, d.gen_prompt_len + n - 1)
            h = c.gen_head
            fwd += 2.0 * g * n * (h.n_embed * h.image_token_embed + h.image_token_embed * h.image_token_size)
        return 3.0 * fwd

    def tokens_per_step(self, d):
        mix = d.mix
        return (
            mix.gen * (d.gen_prompt_len + self.model_cfg.num_gen_tokens) + mix.und * d.und_len + mix.text * d.text_len
        )

    def sampling_model(self, run, params):
        from janusflow_jax.base import special_ids
        from janusflow_jax.janus.model import JanusModel

        gd, st = nnx.split(run.abstract.janus, nnx.Param)
        nnx.replace_by_pure_dict(st, params["janus"])
        return JanusModel(self.model_cfg, gd, st, mesh=run.mesh, processor_dir=self.processor_dir,
                          **special_ids(self.processor_dir))  # fmt: skip

    def write_samples(self, run, params, step):
        r = self.cfg.run
        if not r.sample_prompts:
            return None
        model = self.sampling_model(run, params)
        imgs = model.generate_images(list(r.sample_prompts), cfg_weight=r.sample_cfg, seed=0)
        return run.save_sample_grid(f"step_{step:07d}.png", images.make_grid(np.asarray(imgs)), step)

    def export(self, run, params, step, dest, ema):
        from janusflow_jax.training.tasks.janusflow import processor_files

        host = base.host_tree({"janus": params["janus"]})
        meta = {"family": "janus", "config": self.model_cfg.to_official_json(),
                "gen_image_size": self.model_cfg.gen_image_size, "dtype": "float32", "trained_steps": int(step),
                "stage": self.cfg.stage, "ema": bool(ema), "num_params": base.num_params(host)}  # fmt: skip
        checkpoint.save_params(dest, host, meta, extra_files=processor_files(self.processor_dir), overwrite=True)
        return dest


def architecture(m) -> JanusConfig:
    """The JanusConfig of the `model` section without reading weights."""
    from janusflow_jax import config as C
    from janusflow_jax.plan import model_from_folder, model_preset

    if m.preset:
        family, arch, _ = model_preset(m.preset)
    elif m.config:
        d = C.read_json(m.config)
        family = "janus" if janus_config.is_janus_config(d) or janus_config.is_hf_janus_config(d) else "janusflow"
        arch = janus_config.from_hf_json(d) if janus_config.is_hf_janus_config(d) else (
            janus_config.from_official_json(d) if family == "janus" else None)  # fmt: skip
    else:
        family, arch, _ = model_from_folder(m.init_from)
    if family != "janus":
        raise TrainConfigError(f"task janus: {m.preset or m.config or m.init_from} is a JanusFlow model; "
                               "use task: janusflow")  # fmt: skip
    return arch
