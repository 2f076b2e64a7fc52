"""The public model object: `janusflow_jax.load()` and the parity surface.

Conventions of this surface (see README): arrays are numpy or jax arrays; images and latents are
channels-last `[B, H, W, C]`; flow time t ∈ [0, 1] (0 = noise; ×1000 happens inside); logits are
float32. Every method runs a jitted pure function of `(graphdef, params, inputs)`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow_jax import checkpoint, config as config_lib, weights
from janusflow_jax.config import ConfigError, JanusFlowConfig, VaeConfig
from janusflow_jax.nn.janusflow import JanusFlow
from janusflow_jax.nn.llama import positions_from_mask
from janusflow_jax.nn.vae import AutoencoderKL
from janusflow_jax.safetensors_io import WeightFileError, refuse_pickle
from janusflow_jax.sampling import image as image_sampling
from janusflow_jax.sampling import text as text_sampling
from janusflow_jax.sharding import make_mesh, state_shardings, use_mesh

__all__ = ["JanusFlowModel", "load", "abstract_modules", "LoadError"]


class LoadError(ValueError):
    pass


def abstract_modules(cfg: JanusFlowConfig, vae_cfg: VaeConfig, mesh=None):
    """Abstract (no memory) JanusFlow and VAE modules; leaves are sharded ShapeDtypeStructs."""
    with use_mesh(mesh):
        jf = nnx.eval_shape(lambda: JanusFlow(cfg, rngs=nnx.Rngs(0)))
        vae = nnx.eval_shape(lambda: AutoencoderKL(vae_cfg, rngs=nnx.Rngs(0)))
    return jf, vae


def _place(abstract, pure: dict, mesh) -> tuple[Any, Any]:
    """Put a nested dict of host arrays into the abstract module's Param state, sharded."""
    graphdef, state = nnx.split(abstract, nnx.Param)
    shardings = nnx.to_pure_dict(state_shardings(state, mesh))
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x, s: jax.device_put(x, s), pure, shardings))
    return graphdef, state


def _restore_target(abstract, mesh) -> dict:
    """ShapeDtypeStructs (the model's dtype, sharded on `mesh`) for an Orbax restore."""
    _, state = nnx.split(abstract, nnx.Param)
    shardings = nnx.to_pure_dict(state_shardings(state, mesh))
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nnx.to_pure_dict(state), shardings
    )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _llm_logits(graphdef, params, ids, mask):
    m = nnx.merge(graphdef, params)
    lm = m.language_model
    hidden, _, _ = lm.model(lm.embed(ids), positions_from_mask(mask, ids.shape), mask)
    return lm.logits(hidden)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _understanding_logits(graphdef, params, ids, pixels, seq_mask, emb_mask, mask):
    m = nnx.merge(graphdef, params)
    embeds = m.prepare_inputs_embeds(ids, pixels, seq_mask, emb_mask)
    hidden, _, _ = m.language_model.model(embeds, positions_from_mask(mask, ids.shape), mask)
    return m.language_model.logits(hidden)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _gen_encode(graphdef, params, z, t1000):
    return nnx.merge(graphdef, params).gen_encode(z, t1000)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _gen_decode(graphdef, params, x, skip, t_emb):
    return nnx.merge(graphdef, params).gen_decode(x, skip, t_emb)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_image_tokens", "pad_id"))
def _velocity(graphdef, params, prompt_ids, prompt_mask, z, t1000, cfg_weight, num_image_tokens, pad_id):
    m = nnx.merge(graphdef, params)
    batch = image_sampling.cfg_batch(prompt_ids, prompt_mask, num_image_tokens, pad_id)
    return image_sampling.velocity_fn(m, batch, None, cfg_weight)(z.astype(m.dtype), t1000)


@functools.partial(
    jax.jit, static_argnames=("graphdef", "num_steps", "solver", "use_cache", "pad_id"), donate_argnames=()
)
def _sample_latents(graphdef, params, prompt_ids, prompt_mask, z0, cfg_weight, num_steps, solver, use_cache, pad_id):
    m = nnx.merge(graphdef, params)
    n = m.cfg.grid_for_latent(z0.shape[1]) ** 2
    batch = image_sampling.cfg_batch(prompt_ids, prompt_mask, n, pad_id)
    return image_sampling.sample_latents(
        m, batch, z0.astype(m.dtype), num_steps=num_steps, cfg_weight=cfg_weight, solver=solver, use_cache=use_cache
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "opts"))
def _generate_text(graphdef, params, ids, pixels, seq_mask, emb_mask, mask, key, temperature, top_p, opts):
    m = nnx.merge(graphdef, params)
    embeds = m.prepare_inputs_embeds(ids, pixels, seq_mask, emb_mask)
    return text_sampling.generate(m, embeds, mask, key, opts, temperature, top_p)


@functools.partial(jax.jit, static_argnames=("graphdef", "vae_graphdef", "num_steps", "solver", "pad_id", "progress"))
def _generate_images(
    graphdef,
    params,
    vae_graphdef,
    vae_params,
    ids,
    mask,
    neg_ids,
    neg_mask,
    z0,
    cfg_weight,
    num_steps,
    solver,
    pad_id,
    progress,
):
    """Everything in one program: CFG rows, prompt prefill, scanned ODE, VAE decode, uint8."""
    m = nnx.merge(graphdef, params)
    n = m.cfg.grid_for_latent(z0.shape[1]) ** 2
    batch = image_sampling.cfg_batch(ids, mask, n, pad_id, neg_ids, neg_mask)
    z = image_sampling.sample_latents(
        m, batch, z0.astype(m.dtype), num_steps=num_steps, cfg_weight=cfg_weight, solver=solver, progress=progress
    )
    vae = nnx.merge(vae_graphdef, vae_params)
    x = vae.decode(z.astype(jnp.dtype(vae.cfg.dtype)) / vae.cfg.scaling_factor).astype(jnp.float32)
    return jnp.clip((x + 1.0) / 2.0 * 255.0, 0.0, 255.0).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _vae_decode(graphdef, params, latents):
    vae = nnx.merge(graphdef, params)
    return vae.decode(latents / vae.cfg.scaling_factor)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _vae_encode(graphdef, params, images):
    return nnx.merge(graphdef, params).encode(images)[0]


def _prompt_rows(prompt_ids, batch: int | None = None):
    ids = np.asarray(prompt_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if batch is not None and ids.shape[0] == 1 and batch > 1:
        ids = np.repeat(ids, batch, axis=0)
    return ids.astype(np.int32)


def _t1000(t, batch: int) -> jax.Array:
    """Flow time(s) in [0, 1] → ×1000 float32 `[batch]` (host float64 product, like the reference)."""
    if isinstance(t, jax.core.Tracer):
        return jnp.broadcast_to(jnp.asarray(t, jnp.float32) * 1000.0, (batch,))
    t = np.asarray(t, np.float64) * 1000.0
    return jnp.asarray(np.broadcast_to(t, (batch,)).astype(np.float32))


@dataclasses.dataclass
class JanusFlowModel:
    """A loaded JanusFlow: configs, parameters (sharded on `mesh`) and the jitted entry points."""

    cfg: JanusFlowConfig
    vae_cfg: VaeConfig
    graphdef: Any
    params: Any
    vae_graphdef: Any
    vae_params: Any
    mesh: Any = None
    processor_dir: str | None = None  # folder holding tokenizer/processor files, if any
    pad_id: int = 0  # pad id (masked CFG prompt tokens, left padding, tokens after EOS)
    eos_id: int | None = None  # end of sentence; None: decoding never stops early
    bos_id: int | None = None

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_host_params(cls, cfg, vae_cfg, jf_pure, vae_pure, *, mesh=None, **kw) -> "JanusFlowModel":
        jf_abs, vae_abs = abstract_modules(cfg, vae_cfg, mesh)
        with use_mesh(mesh) as m:
            gd, st = _place(jf_abs, jf_pure, m)
            vgd, vst = _place(vae_abs, vae_pure, m)
        return cls(cfg, vae_cfg, gd, st, vgd, vst, mesh=m, **kw)

    @classmethod
    def init(cls, cfg: JanusFlowConfig, vae_cfg: VaeConfig, *, seed: int = 0, mesh=None, **kw) -> "JanusFlowModel":
        """Randomly initialised model, created directly sharded (`jax.jit(init, out_shardings=...)`)."""
        jf_abs, vae_abs = abstract_modules(cfg, vae_cfg, mesh)
        with use_mesh(mesh) as m:
            out = []
            for abstract, make in (
                (jf_abs, lambda: JanusFlow(cfg, rngs=nnx.Rngs(seed))),
                (vae_abs, lambda: AutoencoderKL(vae_cfg, rngs=nnx.Rngs(seed + 1))),
            ):
                gd, st = nnx.split(abstract, nnx.Param)
                state = jax.jit(
                    lambda make=make: nnx.split(make(), nnx.Param)[1], out_shardings=state_shardings(st, m)
                )()
                out += [gd, state]
        return cls(cfg, vae_cfg, *out, mesh=m, **kw)

    @property
    def module(self) -> JanusFlow:
        """The merged nnx module (eager use, tests)."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def vae(self) -> AutoencoderKL:
        return nnx.merge(self.vae_graphdef, self.vae_params)

    @property
    def dtype(self):
        return jnp.dtype(self.cfg.llm.dtype)

    # --- the parity surface -------------------------------------------------------------------

    def llm_logits(self, input_ids, attention_mask=None) -> jax.Array:
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones(ids.shape, jnp.int32) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        return _llm_logits(self.graphdef, self.params, ids, mask)

    def _und_inputs(self, input_ids, pixel_values, images_seq_mask, images_emb_mask, attention_mask):
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones(ids.shape, jnp.int32) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        return (
            ids,
            jnp.asarray(pixel_values, self.dtype),
            jnp.asarray(images_seq_mask, jnp.bool_),
            jnp.asarray(images_emb_mask, jnp.bool_),
            mask,
        )

    def understanding_logits(self, input_ids, pixel_values, images_seq_mask, images_emb_mask, attention_mask=None):
        inputs = self._und_inputs(input_ids, pixel_values, images_seq_mask, images_emb_mask, attention_mask)
        return _understanding_logits(self.graphdef, self.params, *inputs)

    def gen_encode(self, z, t):
        z = jnp.asarray(z, self.dtype)
        return _gen_encode(self.graphdef, self.params, z, _t1000(t, z.shape[0]))

    def gen_decode(self, x, skip, t_emb):
        return _gen_decode(
            self.graphdef,
            self.params,
            jnp.asarray(x, self.dtype),
            jnp.asarray(skip, self.dtype),
            jnp.asarray(t_emb, self.dtype),
        )

    def velocity(self, prompt_ids, z, t, *, cfg_weight: float, prompt_mask=None):
        """Guided velocity `[B,H,W,4]` of one ODE evaluation; `prompt_ids` `[L]` or `[B, L]` (left-padded,
        ending with the image start tag), `t` the flow time in [0, 1] (scalar or `[B]`)."""
        z = jnp.asarray(z, self.dtype)
        ids = _prompt_rows(prompt_ids, z.shape[0])
        mask = np.ones_like(ids) if prompt_mask is None else _prompt_rows(prompt_mask, z.shape[0])
        n = self.cfg.grid_for_latent(z.shape[1]) ** 2
        t1000 = _t1000(t, z.shape[0])
        t1000 = jnp.concatenate([t1000, t1000])
        return _velocity(
            self.graphdef,
            self.params,
            ids,
            mask,
            z,
            t1000,
            jnp.float32(cfg_weight),
            num_image_tokens=n,
            pad_id=self.pad_id,
        )

    def sample_latents(
        self,
        prompt_ids,
        z0,
        *,
        num_steps: int,
        cfg_weight: float,
        solver: str = "euler",
        prompt_mask=None,
        use_cache=True,
    ):
        """Final latents `[B,h,w,4]` of the CFG rectified-flow ODE from noise `z0` (official sampler defaults)."""
        if int(num_steps) <= 0:
            raise ValueError(f"num_steps must be positive, got {num_steps}")
        z0 = jnp.asarray(z0, self.dtype)
        ids = _prompt_rows(prompt_ids, z0.shape[0])
        mask = np.ones_like(ids) if prompt_mask is None else _prompt_rows(prompt_mask, z0.shape[0])
        return _sample_latents(
            self.graphdef,
            self.params,
            ids,
            mask,
            z0,
            jnp.float32(cfg_weight),
            num_steps=int(num_steps),
            solver=solver,
            use_cache=use_cache,
            pad_id=self.pad_id,
        )

    def generate_text(
        self,
        input_ids,
        pixel_values,
        images_seq_mask,
        images_emb_mask,
        *,
        attention_mask=None,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        return_logits: bool = False,
    ):
        """New token ids `[B, max_new_tokens]` (KV-cached; positions after EOS hold the pad id).

        With `return_logits=True` also returns the float32 logits each token was chosen from."""
        if int(max_new_tokens) <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        inputs = self._und_inputs(input_ids, pixel_values, images_seq_mask, images_emb_mask, attention_mask)
        ids = inputs[0]
        if ids.shape[1] + int(max_new_tokens) > self.cfg.llm.max_position_embeddings:
            raise ValueError(
                f"prompt of {ids.shape[1]} tokens + {max_new_tokens} new tokens exceeds the context "
                f"({self.cfg.llm.max_position_embeddings})"
            )
        opts = text_sampling.DecodeOptions(
            max_new_tokens=int(max_new_tokens),
            eos_id=-1 if self.eos_id is None else int(self.eos_id),
            pad_id=int(self.pad_id),
            greedy=float(temperature) <= 0.0,
        )
        state = self._run(
            _generate_text,
            self.graphdef,
            self.params,
            *inputs,
            jax.random.key(seed),
            jnp.float32(temperature),
            jnp.float32(top_p),
            opts=opts,
        )
        return (state.tokens, state.logits) if return_logits else state.tokens

    # --- the high-level API ------------------------------------------------------------------

    def _run(self, fn, *args, **static):
        """Call jitted `fn`, compiling ahead of time once per input signature, and record the
        seconds spent compiling and running in `self.timings` (for progress reports and benchmarks)."""
        import time

        # Keyed on the tree structure and each leaf's shape/dtype: cheap (flattening ~100 leaves
        # takes well under a millisecond, where printing the tree took ~5 ms on every call).
        leaves, treedef = jax.tree.flatten(args)
        sig = (
            fn.__name__,
            tuple(sorted(static.items())),
            treedef,
            tuple((np.shape(a), str(getattr(a, "dtype", type(a)))) for a in leaves),
        )
        cache = self.__dict__.setdefault("_compiled", {})
        t0 = time.perf_counter()
        if sig not in cache:
            cache[sig] = fn.lower(*args, **static).compile()
        t1 = time.perf_counter()
        # the compiled program takes only the dynamic arguments (graph definitions are static)
        out = jax.block_until_ready(cache[sig](*[a for a in args if not isinstance(a, nnx.GraphDef)]))
        t2 = time.perf_counter()
        timings = self.__dict__.setdefault("timings", {"compile_s": 0.0, "run_s": 0.0})
        timings["compile_s"] += t1 - t0
        timings["run_s"] += t2 - t1
        return out

    @functools.cached_property
    def processor(self):
        from janusflow_jax.processing import Processor

        if self.processor_dir is None:
            raise LoadError("this model has no tokenizer/processor files (load it from a folder that has them)")
        return Processor.from_pretrained(self.processor_dir)

    def latent_shape(self) -> tuple[int, int, int]:
        side = self.cfg.latent_size(self.vae_cfg)
        return (side, side, self.vae_cfg.latent_channels)

    def check_generation_length(self, prompt_len: int) -> None:
        n = self.cfg.num_gen_tokens(self.vae_cfg)
        if prompt_len + n > self.cfg.llm.max_position_embeddings:
            raise ValueError(
                f"prompt of {prompt_len} tokens + {n} image tokens exceeds the context of "
                f"{self.cfg.llm.max_position_embeddings} positions"
            )

    def generate_images(
        self,
        prompts: list[str],
        *,
        num_steps: int = 30,
        cfg_weight: float = 2.0,
        seed: int = 0,
        solver: str = "euler",
        negative_prompt: str | None = None,
        batch_size: int | None = None,
        bucket: int = 32,
        progress: bool = False,
    ) -> np.ndarray:
        """uint8 images `[N, H, W, 3]` in prompt order. Image i's noise is `normal(fold_in(key(seed), i))`,
        so it does not depend on the batch it is drawn in. Prompt lengths are padded up to a
        multiple of `bucket` (exact: left padding is masked), so new lengths rarely recompile."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            return np.zeros((0, self.cfg.gen_image_size, self.cfg.gen_image_size, 3), np.uint8)
        if int(num_steps) <= 0:
            raise ValueError(f"num_steps must be positive, got {num_steps}")
        if solver not in ("euler", "heun"):
            raise ValueError(f"unknown solver {solver!r} (euler or heun)")
        proc = self.processor
        rows = [proc.encode(proc.generation_prompt(p)) for p in prompts]
        neg = proc.encode(proc.generation_prompt(negative_prompt)) if negative_prompt is not None else None
        length = max(len(r) for r in rows + ([neg] if neg else []))
        self.check_generation_length(length)
        length = min(
            -(-length // bucket) * bucket, self.cfg.llm.max_position_embeddings - self.cfg.num_gen_tokens(self.vae_cfg)
        )
        key = jax.random.key(seed)
        lat = self.latent_shape()
        z_all = np.stack(
            [np.asarray(jax.random.normal(jax.random.fold_in(key, i), lat, jnp.float32)) for i in range(len(prompts))]
        )
        bs = batch_size or len(prompts)
        out = []
        for a in range(0, len(prompts), bs):
            ids, mask = proc.left_pad(rows[a : a + bs], length)
            if neg is not None:
                nid, nmask = proc.left_pad([neg] * len(ids), length)
            else:
                nid = nmask = None
            out.append(
                self._run(
                    _generate_images,
                    self.graphdef,
                    self.params,
                    self.vae_graphdef,
                    self.vae_params,
                    ids,
                    mask,
                    nid,
                    nmask,
                    jnp.asarray(z_all[a : a + bs]),
                    jnp.float32(cfg_weight),
                    num_steps=int(num_steps),
                    solver=solver,
                    pad_id=int(self.pad_id),
                    progress=bool(progress),
                )
            )
        return np.concatenate([np.asarray(o) for o in out])

    def answer(
        self,
        images: list,
        questions: list[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        bucket: int = 64,
    ) -> list[str]:
        """Answers (special tokens stripped), one per (image, question or conversation) pair."""
        proc = self.processor
        inputs = proc.encode_understanding(list(images), list(questions))
        t = inputs["input_ids"].shape[1]
        length = -(-t // bucket) * bucket
        if t + max_new_tokens > self.cfg.llm.max_position_embeddings:
            raise ValueError(
                f"prompt of {t} tokens + {max_new_tokens} new tokens exceeds the context of "
                f"{self.cfg.llm.max_position_embeddings} positions"
            )
        length = min(length, self.cfg.llm.max_position_embeddings - max_new_tokens)
        pad = length - t
        ids = np.pad(inputs["input_ids"], ((0, 0), (pad, 0)), constant_values=proc.pad_id)
        mask = np.pad(inputs["attention_mask"], ((0, 0), (pad, 0)))
        seq = np.pad(inputs["images_seq_mask"], ((0, 0), (pad, 0)))
        tokens = self.generate_text(
            ids,
            inputs["pixel_values"],
            seq,
            inputs["images_emb_mask"],
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        return [proc.decode(row) for row in np.asarray(tokens)]

    def vae_decode(self, latents) -> jax.Array:
        """Scaled latents `[B,h,w,C]` → images `[B,H,W,3]` in about [-1, 1] (divides by scaling_factor)."""
        dt = jnp.dtype(self.vae_cfg.dtype)
        return _vae_decode(self.vae_graphdef, self.vae_params, jnp.asarray(latents, dt))

    def vae_encode(self, images) -> jax.Array:
        """Images `[B,H,W,3]` in [-1, 1] → latent mean `[B,h,w,C]` (unscaled)."""
        dt = jnp.dtype(self.vae_cfg.dtype)
        return _vae_encode(self.vae_graphdef, self.vae_params, jnp.asarray(images, dt))


# --- loading -----------------------------------------------------------------------------------


def find_weights(model_dir: str, stem: str) -> str:
    st = os.path.join(model_dir, f"{stem}.safetensors")
    if os.path.isfile(st):
        return st
    for suffix in (".bin", ".pt", ".pth", ".ckpt"):
        p = os.path.join(model_dir, f"{stem}{suffix}" if stem != "model" else f"pytorch_model{suffix}")
        if os.path.isfile(p):
            refuse_pickle(p)
    if os.path.isfile(os.path.join(model_dir, f"{stem}.safetensors.index.json")):
        raise WeightFileError(f"{model_dir}: sharded safetensors ({stem}.safetensors.index.json) are not supported yet")
    raise WeightFileError(f"{model_dir}: no {stem}.safetensors found")


def read_hf_folder(model_dir: str, vae_dir: str, *, dtype: str = "float32", progress=None):
    """Read an official JanusFlow folder + diffusers VAE folder into host param trees (no torch)."""
    if not os.path.isdir(model_dir):
        raise LoadError(f"{model_dir}: not a folder")
    cfg = config_lib.load_official_config(model_dir).with_dtype(dtype)
    if not os.path.isdir(vae_dir):
        raise LoadError(f"{vae_dir}: VAE folder not found (pass vae_path / --vae)")
    vae_cfg = dataclasses.replace(config_lib.load_vae_config(vae_dir), dtype=dtype, param_dtype=dtype)
    jf_abs, vae_abs = abstract_modules(cfg, vae_cfg)
    jf = weights.load_safetensors_params(
        find_weights(model_dir, "model"),
        weights.param_targets(jf_abs),
        weights.JANUSFLOW_RULES,
        weights.JANUSFLOW_IGNORED,
        progress=progress,
    )
    vae = weights.load_safetensors_params(
        find_weights(vae_dir, "diffusion_pytorch_model"),
        weights.param_targets(vae_abs),
        weights.VAE_RULES,
        weights.VAE_IGNORED,
        progress=progress,
    )
    return cfg, vae_cfg, jf, vae


SPECIAL_TOKENS = {
    "bos_id": "<｜begin▁of▁sentence｜>",
    "eos_id": "<｜end▁of▁sentence｜>",
    "pad_id": "<｜▁pad▁｜>",
}


def special_ids(folder: str | None) -> dict[str, int]:
    """BOS/EOS/pad ids read from `folder/tokenizer.json` (never assumed); {} without a tokenizer."""
    if folder is None or not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return {}
    import json

    with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    by_text = {a.get("content"): int(a["id"]) for a in tok.get("added_tokens", [])}
    vocab = tok.get("model", {}).get("vocab", {})
    out = {}
    for field, text in SPECIAL_TOKENS.items():
        if text in by_text:
            out[field] = by_text[text]
        elif isinstance(vocab, dict) and text in vocab:
            out[field] = int(vocab[text])
    if "pad_id" not in out and "eos_id" in out:
        out["pad_id"] = out["eos_id"]  # the official processor's fallback
    return out


DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")


def load(path: str | None = None, *, vae_path: str | None = None, dtype: str = "float32", mesh=None) -> JanusFlowModel:
    """Load a JanusFlow from an official HF-format folder or a `janusflow-convert` Orbax checkpoint;
    without `path`, the small model shipped with the package (`DEFAULT_MODEL`: trained by
    `janusflow-train` on the synthetic shapes world, see train/configs/shapes/).

    HF folder: `config.json` + `model.safetensors` (+ tokenizer/processor files); the VAE comes from
    `vae_path`, or `path/vae` when it exists. Orbax checkpoint: holds the VAE too.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if path is None:
        path = DEFAULT_MODEL
        if not checkpoint.is_checkpoint(path):
            raise LoadError(f"the shipped default model is missing from this installation ({path})")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LoadError(f"{path}: no such checkpoint or model folder")
    if checkpoint.is_checkpoint(path):
        meta = checkpoint.read_metadata(path)
        cfg = config_lib.from_official_json(meta["config"]).with_dtype(dtype)
        vae_cfg = dataclasses.replace(VaeConfig.from_diffusers(meta["vae_config"]), dtype=dtype, param_dtype=dtype)
        mesh = mesh if mesh is not None else make_mesh()
        jf_abs, vae_abs = abstract_modules(cfg, vae_cfg, mesh)
        target = {"janusflow": _restore_target(jf_abs, mesh), "vae": _restore_target(vae_abs, mesh)}
        tree = checkpoint.restore_params(path, target)
        return JanusFlowModel.from_host_params(
            cfg, vae_cfg, tree["janusflow"], tree["vae"], mesh=mesh, processor_dir=path, **special_ids(path)
        )
    vae_dir = vae_path or os.path.join(path, "vae")
    cfg, vae_cfg, jf, vae = read_hf_folder(path, vae_dir, dtype=dtype)
    return JanusFlowModel.from_host_params(cfg, vae_cfg, jf, vae, mesh=mesh, processor_dir=path, **special_ids(path))


def load_vae(path: str, *, dtype: str = "float32", mesh=None) -> tuple[VaeConfig, dict]:
    """VAE config and params (nested dict) from a diffusers folder (`config.json` +
    `diffusion_pytorch_model.safetensors`), a VAE checkpoint written by `janusflow-train` (stage vae),
    or the VAE inside a full janusflow-jax checkpoint."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LoadError(f"{path}: no such VAE checkpoint or folder")
    mesh = mesh if mesh is not None else make_mesh()
    if checkpoint.is_checkpoint(path):
        meta = checkpoint.read_metadata(path)
        vae_cfg = dataclasses.replace(VaeConfig.from_diffusers(meta["vae_config"]), dtype=dtype, param_dtype=dtype)
        if meta.get("kind") == "vae":
            with use_mesh(mesh):
                vae_abs = nnx.eval_shape(lambda: AutoencoderKL(vae_cfg, rngs=nnx.Rngs(0)))
            target = {"vae": _restore_target(vae_abs, mesh)}
        else:
            cfg = config_lib.from_official_json(meta["config"]).with_dtype(dtype)
            jf_abs, vae_abs = abstract_modules(cfg, vae_cfg, mesh)
            target = {"janusflow": _restore_target(jf_abs, mesh), "vae": _restore_target(vae_abs, mesh)}
        return vae_cfg, checkpoint.restore_params(path, target)["vae"]
    vae_cfg = dataclasses.replace(config_lib.load_vae_config(path), dtype=dtype, param_dtype=dtype)
    with use_mesh(mesh):
        vae_abs = nnx.eval_shape(lambda: AutoencoderKL(vae_cfg, rngs=nnx.Rngs(0)))
    params = weights.load_safetensors_params(
        find_weights(path, "diffusion_pytorch_model"),
        weights.param_targets(vae_abs),
        weights.VAE_RULES,
        weights.VAE_IGNORED,
    )
    return vae_cfg, params
