"""The training loop behind `janusflow-train`: model and data setup, sharded state, the jitted step,
Orbax checkpoints with automatic resume, progress, metrics (JSONL + loss-curve PNG) and samples.

Layout of `run.out_dir`:
  checkpoints/<step>/   Orbax CheckpointManager items: state (params, optimizer, EMA, step, PRNG key),
                        data (input-pipeline position), config (the TrainConfig as JSON)
  metrics.jsonl         one line per logged step (process 0)
  loss.png              loss curves, written at the end
  samples/step_*.png    sample grids (process 0)
  export/               a params checkpoint `janusflow_jax.load` and `janusflow-sample` read (EMA when kept)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from janusflow_jax import checkpoint, flops, images
from janusflow_jax import config as config_lib
from janusflow_jax.config import VaeConfig
from janusflow_jax.nn.vae import AutoencoderKL
from janusflow_jax.sharding import make_mesh, use_mesh
from janusflow_jax.training import objective
from janusflow_jax.training import state as state_lib
from janusflow_jax.training import vae as vae_lib
from janusflow_jax.training.config import TrainConfig
from janusflow_jax.training.step import StepStatics, train_step


def _fault(point: str, step: int) -> None:
    """Fault injection for the kill/resume tests: `JANUSFLOW_TRAIN_FAULT=after_step:5` (or
    `after_save:4`) SIGKILLs this process at that point — after step 5's update, or right after
    step 4's checkpoint save was started (async write still in flight)."""
    spec = os.environ.get("JANUSFLOW_TRAIN_FAULT")
    if spec and spec == f"{point}:{step}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class TrainError(RuntimeError):
    """The run cannot go on (non-finite loss, incompatible checkpoint, …)."""


def maybe_init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """`jax.distributed.initialize` when run as one of several processes (flags or JAX's env autodetection)."""
    if coordinator or num_processes:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


# fields that may change between a run and its resumption
RESUMABLE_CHANGES = (
    "run.steps",
    "run.log_every",
    "run.save_every",
    "run.keep",
    "run.sample_every",
    "run.sample_prompts",
    "run.sample_steps",
    "run.sample_cfg",
    "run.async_save",
    "run.export_every",
    "data.num_threads",
    "model.init_from",
    "model.remat",  # how the layer loop runs, not what it computes
    "model.scan_layers",
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
)


class Trainer:
    def __init__(self, cfg: TrainConfig, *, log: Callable[[str], None] | None = None):
        self.cfg = cfg.validate()
        self.pi, self.pc = jax.process_index(), jax.process_count()
        self._log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.mesh = make_mesh(dataclasses.asdict(cfg.mesh))
        self.out_dir = os.path.abspath(cfg.run.out_dir)
        if self.pi == 0:
            os.makedirs(self.out_dir, exist_ok=True)
        self._setup_model()
        self._setup_state()
        self._setup_data()
        self._setup_checkpoints()

    def log(self, msg: str) -> None:
        if self.pi == 0:
            self._log(msg)

    # --- model ------------------------------------------------------------------------------------

    def _setup_model(self) -> None:
        from janusflow_jax.model import DEFAULT_MODEL, load, load_vae
        from janusflow_jax.processing import Processor

        m = self.cfg.model
        if m.init_from == "default":  # the model shipped with the package
            m = dataclasses.replace(m, init_from=DEFAULT_MODEL)
        self.vae_mode = self.cfg.stage == "vae"
        loaded, loaded_vae = None, None
        t = time.perf_counter()
        if self.vae_mode:
            if m.init_from:
                vae_cfg, loaded_vae = load_vae(m.init_from, mesh=self.mesh)
            else:
                vae_cfg = VaeConfig.from_diffusers(config_lib.read_json(m.vae_config))
            base_cfg = None
        else:
            if m.init_from:
                loaded = load(m.init_from, vae_path=None, dtype="float32", mesh=self.mesh)
                base_cfg, vae_cfg = loaded.cfg, loaded.vae_cfg
                loaded_vae = nnx.to_pure_dict(loaded.vae_params)
            elif m.config:
                base_cfg = config_lib.from_official_json(config_lib.read_json(m.config))
            else:
                from janusflow_jax.plan import model_preset

                family, base_cfg, _ = model_preset(m.preset)
                if family != "janusflow":
                    raise TrainError(f"model.preset {m.preset}: Janus training does not exist yet")
            if m.vae_from:
                vae_cfg, loaded_vae = load_vae(m.vae_from, mesh=self.mesh)
        if m.init_from or m.vae_from:
            self.log(
                f"loaded initial weights ({m.init_from or ''} {m.vae_from or ''}) in {time.perf_counter() - t:.1f}s"
            )
        self.processor_dir = m.processor or (loaded.processor_dir if loaded is not None else None)
        if self.processor_dir is None and m.init_from and os.path.isfile(os.path.join(m.init_from, "tokenizer.json")):
            self.processor_dir = m.init_from
        if self.processor_dir is None:
            raise TrainError("model.processor: a folder with the tokenizer/processor files is needed")
        self.processor = Processor.from_pretrained(self.processor_dir)
        self.vae_cfg: VaeConfig = dataclasses.replace(vae_cfg, dtype="float32", param_dtype="float32")
        self._loaded, self._loaded_vae = loaded, loaded_vae
        if self.vae_mode:
            self.model_cfg = None
            self.ocfg = self.cfg.loss
            self.gen_image_size = int(self.vae_cfg.sample_size)
            with use_mesh(self.mesh):
                self.abstract = nnx.eval_shape(lambda: AutoencoderKL(self.vae_cfg, rngs=nnx.Rngs(0)))
        else:
            self.model_cfg = base_cfg.with_dtype(m.dtype, param_dtype="float32").with_remat(m.remat, m.scan_layers)
            self.gen_image_size = self.model_cfg.gen_image_size
            proc = self.processor
            norm = proc.do_normalize and proc.image_mean is not None
            mean = tuple(float(x) for x in proc.image_mean) if norm else (0.0,) * 3
            std = tuple(float(x) for x in proc.image_std) if norm else (1.0,) * 3
            self.ocfg = dataclasses.replace(self.cfg.loss, und_mean=mean, und_std=std, und_image_size=proc.image_size)
            if self.ocfg.repa_weight > 0 and not 1 <= self.ocfg.repa_layer <= self.model_cfg.llm.num_hidden_layers:
                raise TrainError(f"loss.repa_layer must be in 1..{self.model_cfg.llm.num_hidden_layers}")
            side = self.model_cfg.latent_size(self.vae_cfg)
            self.latent_shape = (side, side, self.vae_cfg.latent_channels)
            self.num_gen_tokens = self.model_cfg.num_gen_tokens(self.vae_cfg)
            with use_mesh(self.mesh):
                self.abstract = nnx.eval_shape(
                    lambda: objective.TrainModules(self.model_cfg, self.vae_cfg, self.ocfg, rngs=nnx.Rngs(0))
                )
        self.graphdef, _ = nnx.split(self.abstract, nnx.Param)
        self.p_shard = state_lib.param_shardings(self.abstract, self.mesh)

    def _make_modules(self, seed: int):
        if self.vae_mode:
            return AutoencoderKL(self.vae_cfg, rngs=nnx.Rngs(seed))
        return objective.TrainModules(self.model_cfg, self.vae_cfg, self.ocfg, rngs=nnx.Rngs(seed))

    def _init_params(self) -> dict:
        """Random init (only of what was not loaded), created directly sharded."""
        seed = self.cfg.model.init_seed

        def make():
            return nnx.to_pure_dict(nnx.split(self._make_modules(seed), nnx.Param)[1])

        if self.vae_mode:
            if self._loaded_vae is not None:
                return jax.tree.map(
                    lambda x, s: jax.device_put(jnp.asarray(x, jnp.float32), s), self._loaded_vae, self.p_shard
                )
            with use_mesh(self.mesh):
                return jax.jit(make, out_shardings=self.p_shard)()
        have = {}
        if self._loaded is not None:
            have["janusflow"] = nnx.to_pure_dict(self._loaded.params)
        if self._loaded_vae is not None:
            have["vae"] = self._loaded_vae
        want = [k for k in self.p_shard if k not in have]
        with use_mesh(self.mesh):
            fresh = jax.jit(lambda: {k: make()[k] for k in want}, out_shardings={k: self.p_shard[k] for k in want})()
        params = dict(fresh)
        for k, tree in have.items():
            params[k] = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x, jnp.float32), s), tree, self.p_shard[k])
        self._loaded = self._loaded_vae = None  # free the loaded copies
        return {k: params[k] for k in self.p_shard}

    # --- state and step ---------------------------------------------------------------------------

    def _setup_state(self) -> None:
        o = self.cfg.optim
        lay = train_layout(self.abstract, self.p_shard, self.cfg.stage, o, self.cfg.run.seed, self.mesh)
        self.labels, self.tx = lay.labels, lay.tx
        self.state_shardings, self.abstract_state = lay.state_shardings, lay.abstract_state
        if self.vae_mode:
            self.statics = vae_lib.VaeStatics(self.ocfg.kl_weight, self.ocfg.edge_weight, o.ema_decay)
        else:
            self.statics = StepStatics(self.ocfg, self.latent_shape, self.num_gen_tokens, o.grad_accum, o.ema_decay)
        self.log(f"stage {self.cfg.stage}: {lay.n_train / 1e6:.2f}M of {lay.n_all / 1e6:.2f}M parameters train")

    def _fresh_state(self) -> dict:
        params = self._init_params()
        use_ema = self.cfg.optim.ema_decay is not None
        with use_mesh(self.mesh):
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
        flat = state_lib.flat_params(params)
        ema = {k: jnp.array(flat[k], copy=True) for k in state_lib.ema_keys(self.labels)} if use_ema else {}
        rep = NamedSharding(self.mesh, P())
        return {
            "step": jax.device_put(jnp.zeros((), jnp.int32), rep),
            "params": params,
            "opt_state": opt_state,
            "ema": ema,
            "key": jax.device_put(jax.random.key_data(jax.random.key(self.cfg.run.seed)), rep),
        }

    def _batch_shardings(self, batch_np: dict) -> dict:
        return batch_shardings(batch_np, self.mesh)

    def _compile_step(self, batch_np: dict):
        if self.vae_mode:
            fn = functools.partial(vae_lib.vae_train_step, self.graphdef, self.tx, self.statics)
        else:
            fn = functools.partial(train_step, self.graphdef, self.tx, self.labels, self.statics)
        self._bs = self._batch_shardings(batch_np)
        self._step = jit_step(fn, self.state_shardings, self._bs, self.mesh)

    def global_batch(self, batch_np: dict) -> dict:
        """This process's rows → global arrays sharded over (data, fsdp)."""
        return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x), batch_np, self._bs)

    # --- data -------------------------------------------------------------------------------------

    def _setup_data(self) -> None:
        from janusflow_jax.training import data_sources

        d = self.cfg.data
        self.loader = data_sources.make_loader(
            d,
            processor=self.processor,
            gen_image_size=self.gen_image_size,
            seed=self.cfg.run.seed,
            process_index=self.pi,
            process_count=self.pc,
            log=self.log,
        )
        mix = d.mix
        if self.vae_mode:
            lat = self.gen_image_size // self.vae_cfg.downsample_factor
            self.tokens_per_step = mix.gen * lat * lat  # latent positions
            enc_dec = 2 * flops.vae_decode_flops(self.vae_cfg, lat, mix.gen)  # encoder ≈ decoder
            self.flops_per_step = 3.0 * enc_dec
            return
        self.tokens_per_step = (
            mix.gen * (d.gen_prompt_len + self.num_gen_tokens) + mix.und * d.und_len + mix.text * d.text_len
        )
        self.flops_per_step = model_flops_per_step(self.model_cfg, self.latent_shape[0], self.ocfg, d)

    # --- checkpoints ------------------------------------------------------------------------------

    def _setup_checkpoints(self) -> None:
        import orbax.checkpoint as ocp

        r = self.cfg.run
        self.ckpt_dir = os.path.join(self.out_dir, "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=r.keep, create=True, enable_async_checkpointing=r.async_save)
        self.mngr = ocp.CheckpointManager(self.ckpt_dir, options=options, item_names=("state", "data", "config"))

    def save(self, state: dict, step: int) -> None:
        import orbax.checkpoint as ocp

        self.mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(self.loader.get_state()),
                config=ocp.args.JsonSave(self.cfg.to_dict()),
            ),
            force=True,
        )

    def restore_or_init(self) -> dict:
        import orbax.checkpoint as ocp

        latest = self.mngr.latest_step()
        if latest is None:
            self.log("no checkpoint found: starting from step 0")
            return self._fresh_state()
        t = time.perf_counter()
        saved_cfg = self.mngr.restore(latest, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        changed = [k for k in _config_diff(saved_cfg, self.cfg.to_dict()) if k not in RESUMABLE_CHANGES]
        if changed:
            raise TrainError(
                f"{self.ckpt_dir} holds a run with a different config ({', '.join(changed)}); "
                "use another run.out_dir or the same settings"
            )
        out = self.mngr.restore(
            latest,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(self.abstract_state), data=ocp.args.JsonRestore()),
        )
        self.loader.set_state(out["data"])
        self.log(f"resumed from {self.ckpt_dir}/{latest} in {time.perf_counter() - t:.1f}s")
        return out["state"]

    # --- outputs ----------------------------------------------------------------------------------

    def sampling_model(self, state: dict):
        """A `JanusFlowModel` on the current weights (EMA where kept) for sample images / export."""
        from janusflow_jax.model import JanusFlowModel, special_ids

        params = state_lib.with_ema(state["params"], state["ema"]) if state["ema"] else state["params"]
        jf_gd, jf_st = nnx.split(self.abstract.janusflow, nnx.Param)
        vae_gd, vae_st = nnx.split(self.abstract.vae, nnx.Param)
        nnx.replace_by_pure_dict(jf_st, params["janusflow"])
        nnx.replace_by_pure_dict(vae_st, params["vae"])
        return JanusFlowModel(
            self.model_cfg,
            self.vae_cfg,
            jf_gd,
            jf_st,
            vae_gd,
            vae_st,
            mesh=self.mesh,
            processor_dir=self.processor_dir,
            **special_ids(self.processor_dir),
        )

    def write_samples(self, state: dict, step: int) -> str | None:
        r = self.cfg.run
        if self.vae_mode:
            return self._write_reconstructions(state, step)
        if not r.sample_prompts:
            return None
        model = self.sampling_model(state)
        imgs = model.generate_images(list(r.sample_prompts), num_steps=r.sample_steps, cfg_weight=r.sample_cfg, seed=0)
        if self.pi != 0:
            return None
        path = os.path.join(self.out_dir, "samples", f"step_{step:07d}.png")
        images.save_png(path, images.make_grid(np.asarray(imgs)))
        self.log(f"wrote samples {path}")
        return path

    def _vae_module(self, state: dict):
        params = state_lib.with_ema(state["params"], state["ema"]) if state["ema"] else state["params"]
        return nnx.merge(self.graphdef, params)

    def _probe_images(self, n_batches: int = 4) -> np.ndarray:
        """Images of a few batches from a fresh loader (the training stream's start; same every time)."""
        from janusflow_jax.training import data_sources

        loader = data_sources.make_loader(
            self.cfg.data,
            processor=self.processor,
            gen_image_size=self.gen_image_size,
            seed=self.cfg.run.seed,
            log=lambda m: None,
        )
        return np.concatenate([next(loader)["gen"]["image"] for _ in range(n_batches)])

    def _write_reconstructions(self, state: dict, step: int) -> str | None:
        if self.pc > 1:
            return None
        imgs = self._probe_images(1)[:8]
        rec = np.asarray(jax.jit(vae_lib.reconstruct)(self._vae_module(state), jnp.asarray(imgs)))
        path = os.path.join(self.out_dir, "samples", f"recon_{step:07d}.png")
        images.save_png(path, images.make_grid(np.concatenate([imgs, rec]), cols=len(imgs)))
        self.log(f"wrote reconstructions (top: input, bottom: output) {path}")
        return path

    def _export_vae(self, state: dict, step: int) -> str:
        vae = self._vae_module(state)
        scale = float(jax.jit(vae_lib.latent_scale)(vae, jnp.asarray(self._probe_images())))
        vae_cfg = dataclasses.replace(self.vae_cfg, scaling_factor=scale)
        params = state_lib.with_ema(state["params"], state["ema"]) if state["ema"] else state["params"]
        host = {"vae": jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)}
        meta = {
            "kind": "vae",
            "vae_config": vae_cfg.to_diffusers(),
            "dtype": "float32",
            "trained_steps": int(step),
            "num_params": int(sum(x.size for x in jax.tree.leaves(host))),
        }
        dest = os.path.join(self.out_dir, "export")
        checkpoint.save_params(dest, host, meta, overwrite=True)
        self.log(f"exported the VAE (scaling_factor {scale:.5f} = 1/std of the latents) to {dest}")
        return dest

    def _exported_step(self) -> int | None:
        dest = os.path.join(self.out_dir, "export")
        if not checkpoint.is_checkpoint(dest):
            return None
        return checkpoint.read_metadata(dest).get("trained_steps")

    def export(self, state: dict, step: int) -> str | None:
        """Params checkpoint (EMA when kept) that `janusflow_jax.load` / `janusflow-sample` read."""
        if self.pc > 1:
            self.log("export skipped in a multi-process run (sample from the checkpoint with one process)")
            return None
        if self.vae_mode:
            return self._export_vae(state, step)
        params = state_lib.with_ema(state["params"], state["ema"]) if state["ema"] else state["params"]
        host = jax.tree.map(
            lambda x: np.asarray(jax.device_get(x)), {"janusflow": params["janusflow"], "vae": params["vae"]}
        )
        meta = {
            "config": self.model_cfg.official,
            "vae_config": self.vae_cfg.to_diffusers(),
            "dtype": "float32",
            "trained_steps": int(step),
            "stage": self.cfg.stage,
            "ema": bool(state["ema"]),
            "num_params": int(sum(x.size for x in jax.tree.leaves(host))),
        }
        extra = {
            n: os.path.join(self.processor_dir, n)
            for n in checkpoint.PROCESSOR_FILES
            if os.path.isfile(os.path.join(self.processor_dir, n))
        }
        dest = os.path.join(self.out_dir, "export")
        checkpoint.save_params(dest, host, meta, extra_files=extra, overwrite=True)
        self.log(f"exported step {step} weights{' (EMA)' if state['ema'] else ''} to {dest}")
        return dest

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        r = self.cfg.run
        state = self.restore_or_init()
        step = int(jax.device_get(state["step"]))
        peak = flops.matmul_peak("bfloat16" if self.cfg.model.dtype == "bfloat16" else "float32")
        ndev = self.mesh.size
        self.log(
            f"mesh {dict(self.mesh.shape)} on {ndev} {jax.devices()[0].platform} device(s), {self.pc} process(es); "
            f"matmul peak {peak / 1e9:.1f} GFLOP/s per device; {self.flops_per_step / 1e9:.2f} GFLOP per step"
        )
        metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        history: list[dict] = _read_history(metrics_path, step) if self.pi == 0 else []
        last: dict[str, Any] = {}
        t_start = time.perf_counter()
        steps_done = 0
        t_prev = None
        while step < r.steps:
            batch_np = next(self.loader)
            if not hasattr(self, "_step"):
                self._compile_step(batch_np)
                self.log("compiling the train step …")
            batch = self.global_batch(batch_np)
            t0 = time.perf_counter()
            state, m = self._step(state, batch)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            t1 = time.perf_counter()
            step += 1
            if not all(math.isfinite(v) for v in m.values()):
                bad = ", ".join(f"{k}={v}" for k, v in m.items() if not math.isfinite(v))
                self.mngr.wait_until_finished()
                raise TrainError(
                    f"non-finite loss at step {step} ({bad}); stopped. The last good checkpoint is step "
                    f"{self.mngr.latest_step()} in {self.ckpt_dir}"
                )
            dt = t1 - t0 if t_prev is None else t1 - t_prev
            t_prev = t1
            if steps_done == 0:
                self.log(f"first step (compile + run) {t1 - t0:.1f}s")
            steps_done += 1
            m.update(
                step=step,
                step_time=dt,
                tokens_per_s=self.tokens_per_step / dt,
                mfu=flops.mfu(self.flops_per_step, dt, peak, ndev),
                lr=float(state_lib.learning_rate(self.cfg.optim)(step - 1)),
            )
            last = m
            if step % r.log_every == 0 or step == r.steps or steps_done == 1:
                if self.pi == 0:
                    history.append(m)
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(m) + "\n")
                elapsed = time.perf_counter() - t_start
                eta = (r.steps - step) * elapsed / steps_done
                self.log(_progress_line(m, r.steps, eta))
            _fault("after_step", step)
            if step % r.save_every == 0 or step == r.steps:
                self.save(state, step)
                _fault("after_save", step)
            if r.sample_every and step % r.sample_every == 0 and step != r.steps:
                self.write_samples(state, step)
            if r.export_every and step % r.export_every == 0 and step != r.steps:
                self.export(state, step)
        self.mngr.wait_until_finished()
        if self.pi == 0 and history:
            self.write_loss_curve(history)
        if steps_done:
            self.write_samples(state, step)
        if steps_done or self._exported_step() != step:  # also a run killed between its last save and export
            self.export(state, step)
        self.state = state
        return last

    def write_loss_curve(self, history: list[dict]) -> str:
        keys = [k for k in ("loss", "rf", "repa", "und", "text", "l1", "l2", "edge") if any(k in h for h in history)]
        series = {k: [(h["step"], h[k]) for h in history if k in h] for k in keys}
        path = os.path.join(self.out_dir, "loss.png")
        images.plot_curves(path, series, title=f"janusflow-train stage {self.cfg.stage}: loss parts")
        self.log(f"wrote {path}")
        return path

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()


@dataclasses.dataclass(frozen=True)
class TrainLayout:
    """The abstract train state of a run and how it is laid out (no arrays): what `Trainer` builds
    before it touches weights, and what `janusflow_jax.plan` compiles ahead of time."""

    labels: dict  # params tree of "train" / "frozen"
    tx: Any  # the optax transformation (frozen leaves: set_to_zero)
    state_shardings: dict
    abstract_state: dict  # ShapeDtypeStructs with their shardings
    n_train: int
    n_all: int


def train_layout(abstract, p_shard: dict, stage: str, optim, seed: int, mesh) -> TrainLayout:
    """Labels, optimizer, shardings and abstract state for the abstract modules `abstract`."""
    abstract_params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nnx.to_pure_dict(nnx.split(abstract, nnx.Param)[1]),
        p_shard,
    )
    labels = state_lib.labels_for(abstract_params, stage)
    tx = state_lib.make_optimizer(optim, labels)
    use_ema = optim.ema_decay is not None
    key = jax.random.key(seed)
    abstract_state = jax.eval_shape(lambda p: state_lib.init_state(p, tx, labels, key, use_ema), abstract_params)
    shardings = state_lib.state_shardings_for(abstract_state, p_shard, tx, mesh)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
    )
    leaves, labs = jax.tree.leaves(abstract_params), jax.tree.leaves(labels)
    n_train = sum(math.prod(p.shape) for p, lab in zip(leaves, labs) if lab == state_lib.TRAIN)
    n_all = sum(math.prod(p.shape) for p in leaves)
    return TrainLayout(labels, tx, shardings, abstract_state, n_train, n_all)


def batch_shardings(batch: dict, mesh) -> dict:
    """Every batch array split by rows over the batch axes ("data", "fsdp")."""
    return jax.tree.map(lambda x: NamedSharding(mesh, P(("data", "fsdp"), *([None] * (len(x.shape) - 1)))), batch)


def jit_step(fn, state_shardings: dict, batch_sh: dict, mesh):
    """`fn(state, batch) -> (state, metrics)` jitted with explicit shardings, the state donated."""
    rep = NamedSharding(mesh, P())
    return jax.jit(fn, in_shardings=(state_shardings, batch_sh), out_shardings=(state_shardings, rep), donate_argnums=0)


def model_flops_per_step(c, latent_side: int, ocfg, d) -> float:
    """Model FLOPs of one step on the global batch `d.mix` (a DataConfig): forward + backward (2×
    forward) of the networks the loss flows through, plus the forward of the frozen feature
    extractors (SigLIP for REPA); the VAE encoder is not counted."""
    mix = d.mix
    fwd_train = 0.0
    fwd_frozen = 0.0
    if mix.gen:
        fwd_train += flops.gen_step_flops(c, mix.gen, latent_side, d.gen_prompt_len, recompute=True)
        if ocfg.repa_weight > 0:
            fwd_frozen += flops.siglip_flops(c.siglip, mix.gen)
    if mix.und:
        fwd_train += flops.siglip_flops(c.siglip, mix.und)
        fwd_train += flops.llm_flops(c.llm, mix.und, d.und_len, lm_head_tokens=d.und_len)
    if mix.text:
        fwd_train += flops.llm_flops(c.llm, mix.text, d.text_len, lm_head_tokens=d.text_len)
    return 3.0 * fwd_train + fwd_frozen


def _read_history(path: str, upto: int) -> list[dict]:
    """Metrics already logged before a resume (the lines up to the resumed step)."""
    out = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    h = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if h.get("step", 0) <= upto:
                    out.append(h)
        with open(path, "w") as f:  # drop lines of steps that will be redone
            f.writelines(json.dumps(h) + "\n" for h in out)
    return out


def _progress_line(m: dict, total: int, eta: float) -> str:
    frac = m["step"] / total
    bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
    parts = " ".join(f"{k} {m[k]:.4f}" for k in ("rf", "repa", "und", "text", "l1", "edge", "kl") if k in m)
    return (
        f"[{bar}] step {m['step']}/{total} loss {m['loss']:.4f} ({parts}) | {m['step_time']:.2f}s/step "
        f"{m['tokens_per_s']:.0f} tok/s MFU {m['mfu']:.1%} | ETA {int(eta // 60)}m{int(eta % 60):02d}s"
    )
