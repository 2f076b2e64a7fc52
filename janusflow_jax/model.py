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
from janusflow_jax.base import LoadError, ModelBase, place_params as _place, restore_target as _restore_target
from janusflow_jax.base import special_ids
from janusflow_jax.config import ConfigError, JanusFlowConfig, VaeConfig
from janusflow_jax.nn.janusflow import JanusFlow
from janusflow_jax.nn.vae import AutoencoderKL
from janusflow_jax.weight_files import open_weights
from janusflow_jax.sampling import image as image_sampling
from janusflow_jax.sharding import make_mesh, state_shardings, use_mesh

__all__ = ["JanusFlowModel", "load", "abstract_modules", "LoadError", "special_ids"]


def abstract_modules(cfg: JanusFlowConfig, vae_cfg: VaeConfig, mesh=None):
    """Abstract (no memory) JanusFlow and VAE modules; leaves are sharded ShapeDtypeStructs."""
    with use_mesh(mesh):
        jf = nnx.eval_shape(lambda: JanusFlow(cfg, rngs=nnx.Rngs(0)))
        vae = nnx.eval_shape(lambda: AutoencoderKL(vae_cfg, rngs=nnx.Rngs(0)))
    return jf, vae


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


def _images_and_latents(
    graphdef, params, vae_graphdef, vae_params, ids, mask, neg_ids, neg_mask, z0, cfg_weight, num_steps, solver,
    pad_id, progress,
):  # fmt: skip
    """CFG rows, prompt prefill, scanned ODE, VAE decode: `(uint8 images, final latents)`."""
    m = nnx.merge(graphdef, params)
    n = m.cfg.grid_for_latent(z0.shape[1]) ** 2
    batch = image_sampling.cfg_batch(ids, mask, n, pad_id, neg_ids, neg_mask)
    z = image_sampling.sample_latents(
        m, batch, z0.astype(m.dtype), num_steps=num_steps, cfg_weight=cfg_weight, solver=solver, progress=progress
    )
    vae = nnx.merge(vae_graphdef, vae_params)
    x = vae.decode(z.astype(jnp.dtype(vae.cfg.dtype)) / vae.cfg.scaling_factor).astype(jnp.float32)
    return jnp.clip((x + 1.0) / 2.0 * 255.0, 0.0, 255.0).astype(jnp.uint8), z.astype(jnp.float32)


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
    return _images_and_latents(graphdef, params, vae_graphdef, vae_params, ids, mask, neg_ids, neg_mask, z0,
                               cfg_weight, num_steps, solver, pad_id, progress)[0]  # fmt: skip


@functools.partial(
    jax.jit, static_argnames=("graphdef", "vae_graphdef", "latent_shape", "num_steps", "solver", "pad_id")
)
def _generate_batch(
    graphdef, params, vae_graphdef, vae_params, ids, mask, neg_ids, neg_mask, key_data, cfg_weight, latent_shape,
    num_steps, solver, pad_id,
):  # fmt: skip
    """`_generate_images` from one explicit key per row (raw key data `[B, 2]`), also returning the
    latents: row r's noise is `normal(key_r)`, so it depends on that key only, never on the row's
    slot or the batch size."""
    keys = jax.random.wrap_key_data(key_data)
    z0 = jax.vmap(lambda k: jax.random.normal(k, latent_shape, jnp.float32))(keys)
    return _images_and_latents(graphdef, params, vae_graphdef, vae_params, ids, mask, neg_ids, neg_mask, z0,
                               cfg_weight, num_steps, solver, pad_id, False)  # fmt: skip


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
class JanusFlowModel(ModelBase):
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

    family = "janusflow"

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
    def vae(self) -> AutoencoderKL:
        return nnx.merge(self.vae_graphdef, self.vae_params)

    # --- the parity surface -------------------------------------------------------------------

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

    # --- the high-level API ------------------------------------------------------------------

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

    def generate_batch(
        self,
        ids,
        mask,
        key_data,
        *,
        num_steps: int,
        cfg_weight: float,
        solver: str = "euler",
        neg_ids=None,
        neg_mask=None,
    ) -> tuple[jax.Array, jax.Array]:
        """One compiled batch from explicit per-image keys: `(uint8 images [B,H,W,3], float32 latents
        [B,h,w,4])`. `ids`/`mask` `[B, L]` left-padded generation prompts (`neg_*` the same for a
        negative prompt), `key_data` `[B, 2]` uint32 raw keys: row r's noise is `normal(key_r)`.
        Inputs may be global arrays sharded over the mesh's batch axes (data parallel, see
        `janusflow_jax.sampling.batch`); the program is traced with this model's mesh set."""
        if int(num_steps) <= 0:
            raise ValueError(f"num_steps must be positive, got {num_steps}")
        if solver not in ("euler", "heun"):
            raise ValueError(f"unknown solver {solver!r} (euler or heun)")
        with use_mesh(self.mesh):
            return self._run(
                _generate_batch,
                self.graphdef,
                self.params,
                self.vae_graphdef,
                self.vae_params,
                ids,
                mask,
                neg_ids,
                neg_mask,
                key_data,
                np.float32(cfg_weight),  # a host scalar: jit places it (also across processes)
                latent_shape=self.latent_shape(),
                num_steps=int(num_steps),
                solver=solver,
                pad_id=int(self.pad_id),
            )

    def vae_decode(self, latents) -> jax.Array:
        """Scaled latents `[B,h,w,C]` → images `[B,H,W,3]` in about [-1, 1] (divides by scaling_factor)."""
        dt = jnp.dtype(self.vae_cfg.dtype)
        return _vae_decode(self.vae_graphdef, self.vae_params, jnp.asarray(latents, dt))

    def vae_encode(self, images) -> jax.Array:
        """Images `[B,H,W,3]` in [-1, 1] → latent mean `[B,h,w,C]` (unscaled)."""
        dt = jnp.dtype(self.vae_cfg.dtype)
        return _vae_encode(self.vae_graphdef, self.vae_params, jnp.asarray(images, dt))


# --- loading -----------------------------------------------------------------------------------


def hf_folder_parts(model_dir: str, vae_dir: str, *, dtype: str = "float32"):
    """Configs of an official JanusFlow folder + diffusers VAE folder and, per parameter tree, what
    converts it: `(cfg, vae_cfg, [(tree, source, targets, rules, ignored)])` (nothing read yet but
    configs and weight-file headers)."""
    if not os.path.isdir(model_dir):
        raise LoadError(f"{model_dir}: not a folder")
    cfg = config_lib.load_official_config(model_dir).with_dtype(dtype)
    if not os.path.isdir(vae_dir):
        raise LoadError(f"{vae_dir}: VAE folder not found (pass vae_path / --vae)")
    vae_cfg = dataclasses.replace(config_lib.load_vae_config(vae_dir), dtype=dtype, param_dtype=dtype)
    jf_abs, vae_abs = abstract_modules(cfg, vae_cfg)
    parts = [
        ("janusflow", open_weights(model_dir, "model"), weights.param_targets(jf_abs), weights.JANUSFLOW_RULES,
         weights.JANUSFLOW_IGNORED),
        ("vae", open_weights(vae_dir, "diffusion_pytorch_model"), weights.param_targets(vae_abs), weights.VAE_RULES,
         weights.VAE_IGNORED),
    ]  # fmt: skip
    return cfg, vae_cfg, parts


def read_hf_folder(model_dir: str, vae_dir: str, *, dtype: str = "float32", progress=None):
    """Read an official JanusFlow folder + diffusers VAE folder into host param trees (no torch)."""
    cfg, vae_cfg, parts = hf_folder_parts(model_dir, vae_dir, dtype=dtype)
    jf, vae = (weights.load_params(src, t, r, ig, progress=progress) for _, src, t, r, ig in parts)
    return cfg, vae_cfg, jf, vae


_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# the models shipped with the package, by name: `janusflow_jax.load(name)`, `--checkpoint name` of the CLIs,
# `model.init_from=name` / `model.vae_from=name` of janusflow-train (a name wins over a folder of that name
# in the working directory: give ./name for the folder)
SHIPPED_MODELS: dict[str, str] = {
    "default": os.path.join(_PACKAGE, "default_model"),
}
DEFAULT_MODEL = SHIPPED_MODELS["default"]


def shipped_path(path: str | os.PathLike | None) -> str:
    """The folder of a shipped model's name (None: "default"); any other path unchanged (as a str)."""
    if path is None:
        return DEFAULT_MODEL
    path = os.fspath(path)
    return SHIPPED_MODELS.get(path, path)


def detect_family(path: str) -> str:
    """ "janusflow" or "janus" for a model folder (its config.json) or a janusflow-jax checkpoint
    (its metadata); anything else is a ConfigError naming what was found."""
    if checkpoint.is_checkpoint(path):
        meta = checkpoint.read_metadata(path)
        fam = meta.get("family", "janusflow")  # checkpoints written before the Janus family were JanusFlow
        if fam not in ("janusflow", "janus"):
            raise ConfigError(f"{path}: checkpoint metadata names an unknown model family {fam!r}")
        return fam
    from janusflow_jax.janus import config as janus_config

    d = config_lib.read_json(os.path.join(path, "config.json"))
    if janus_config.is_janus_config(d) or janus_config.is_hf_janus_config(d):
        return "janus"
    if isinstance(d, dict) and "vision_gen_enc_config" in d:
        return "janusflow"
    keys = sorted(d)[:8] if isinstance(d, dict) else type(d).__name__
    raise ConfigError(
        f"{os.path.join(path, 'config.json')}: neither a JanusFlow config (vision_gen_enc_config) nor a Janus "
        f"config (gen_vision_config, or transformers' model_type 'janus'); found {keys}"
    )


def load(path: str | None = None, *, vae_path: str | None = None, dtype: str = "float32", mesh=None):
    """Load a model of either family from an official folder or a `janusflow-convert` Orbax
    checkpoint; the family is detected from the folder (config.json fields or checkpoint metadata)
    and the matching model object returned (`JanusFlowModel` or `JanusModel`, `.family` says which).
    Without `path`, the small JanusFlow shipped with the package (`DEFAULT_MODEL`: trained by
    `janusflow-train` on the synthetic shapes world, see train/configs/shapes/).

    JanusFlow folder: `config.json` + weights (+ tokenizer/processor files); the VAE comes from
    `vae_path`, or `path/vae` when it exists. Janus folder: `config.json` + weights (the VQ tokenizer
    is inside). Weights in any published layout (see `weight_files.open_weights`). Orbax checkpoint:
    holds everything.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    name = "default" if path is None else os.fspath(path)
    path = shipped_path(path)
    if name in SHIPPED_MODELS and not checkpoint.is_checkpoint(path):
        raise LoadError(f"the shipped model {name!r} is missing from this installation ({path})")
    if not os.path.exists(path):
        raise LoadError(f"{path}: no such checkpoint or model folder")
    if not os.path.isdir(path):
        raise LoadError(f"{path}: not a folder (pass the model folder or checkpoint folder)")
    if detect_family(path) == "janus":
        if vae_path is not None:
            raise LoadError(f"{path} is a Janus model: its VQ tokenizer is inside (drop vae_path / --vae)")
        from janusflow_jax.janus import model as janus_model

        return janus_model.load(path, dtype=dtype, mesh=mesh)
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
    params = weights.load_params(
        open_weights(path, "diffusion_pytorch_model"),
        weights.param_targets(vae_abs),
        weights.VAE_RULES,
        weights.VAE_IGNORED,
    )
    return vae_cfg, params
