"""The training loop behind `janusflow-train`, generic over tasks (`training/tasks/`): data, the
jitted step, Orbax checkpoints with automatic resume, NaN stop, progress, metrics (JSONL + loss-curve
PNG), samples and the export. What is trained and how comes from `training.build(cfg, mesh)`.

Layout of `run.out_dir`:
  checkpoints/<step>/   Orbax CheckpointManager items: state (params, optimizer, EMA, step, PRNG key),
                        data (input-pipeline position), config (the TrainConfig as JSON)
  metrics.jsonl         one line per logged step (process 0)
  loss.png              loss curves, written at the end
  samples/*.png         sample grids (process 0)
  export/               a params checkpoint `janusflow_jax.load` and `janusflow-sample` read (EMA when kept)
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from janusflow_jax import checkpoint, flops, images
from janusflow_jax.sharding import make_mesh
from janusflow_jax.training import state as state_lib
from janusflow_jax.training.build import batch_shardings, build, jit_step, train_layout  # noqa: F401 (re-exported)
from janusflow_jax.training.config import TrainConfig


def _fault_at(point: str, step: int) -> bool:
    spec = os.environ.get("JANUSFLOW_TRAIN_FAULT")
    return bool(spec) and spec == f"{point}:{step}"


def _fault(point: str, step: int) -> None:
    """Fault injection for the kill/resume tests: `JANUSFLOW_TRAIN_FAULT=after_step:5` (or
    `after_save:4`) SIGKILLs this process at that point — after step 5's update, or right after
    step 4's checkpoint save was started (async write still in flight)."""
    if _fault_at(point, step):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _poisoned(batch: dict, step: int) -> dict:
    """`JANUSFLOW_TRAIN_FAULT=nan_batch:3`: step 3's batch arrives with NaN in every float array (a
    corrupt batch), for the NaN-stop test; the compiled step is the same program as a healthy run's."""
    if not _fault_at("nan_batch", step):
        return batch
    return jax.tree.map(lambda v: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v, batch)


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
    "model.vae_from",
    "model.vq_from",
    "model.processor",
    "model.remat",  # how the layer loop runs, not what it computes
    "model.scan_layers",
    "mesh.data",
    "mesh.fsdp",
    "mesh.tensor",
)


class Trainer:
    def __init__(self, cfg: TrainConfig, *, log: Callable[[str], None] | None = None):
        self.cfg = cfg = cfg.validate()
        self.pi, self.pc = jax.process_index(), jax.process_count()
        self._log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.mesh = make_mesh(dataclasses.asdict(cfg.mesh))
        self.out_dir = os.path.abspath(cfg.run.out_dir)
        if self.pi == 0:
            os.makedirs(self.out_dir, exist_ok=True)
        self.built = build(cfg, self.mesh, log=self.log)
        self.task = self.built.task
        self.abstract, self.graphdef = self.built.abstract, self.built.graphdef
        lay = self.built.layout
        self.labels, self.tx, self.abstract_state = lay.labels, lay.tx, lay.abstract_state
        self.log(
            f"task {cfg.task} stage {cfg.stage}: {lay.n_train / 1e6:.2f}M of {lay.n_all / 1e6:.2f}M parameters train"
        )
        self._setup_data()
        self._setup_checkpoints()

    def log(self, msg: str) -> None:
        if self.pi == 0:
            self._log(msg)

    # --- data -------------------------------------------------------------------------------------

    def _make_loader(self, *, quiet: bool = False):
        from janusflow_jax.training import data_sources

        return data_sources.make_loader(
            self.cfg.data,
            processor=self.task.processor,
            gen_image_size=self.task.gen_image_size,
            seed=self.cfg.run.seed,
            process_index=0 if quiet else self.pi,
            process_count=1 if quiet else self.pc,
            log=(lambda m: None) if quiet else self.log,
        )

    def _setup_data(self) -> None:
        self.loader = self._make_loader()
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        for k in ("gen", "und", "text"):
            rows = getattr(self.cfg.data.mix, k)
            if rows % shards:
                raise TrainError(
                    f"data.mix.{k}={rows} does not split over the {shards} batch shards (data × fsdp) of the mesh "
                    f"{dict(self.mesh.shape)}: give a multiple of {shards} rows or a smaller mesh"
                )
        self.tokens_per_step = self.built.tokens_per_step()
        self.flops_per_step = self.built.flops_per_step()

    def probe_images(self, n_batches: int = 4) -> np.ndarray:
        """Images of a few batches from a fresh loader (the training stream's start; same every time)."""
        loader = self._make_loader(quiet=True)
        return np.concatenate([next(loader)["gen"]["image"] for _ in range(n_batches)])

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
            return self.built.init_state()
        t = time.perf_counter()
        saved_cfg = self.mngr.restore(latest, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        changed = [k for k in _config_diff(saved_cfg, self.cfg.to_dict()) if k not in RESUMABLE_CHANGES]
        if changed:
            raise TrainError(
                f"{self.ckpt_dir} holds a run with a different config ({', '.join(changed)}); "
                "use another run.out_dir or the same settings"
            )
        self.task.loaded = {}  # the checkpoint has the weights
        out = self.mngr.restore(
            latest,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(self.abstract_state), data=ocp.args.JsonRestore()),
        )
        self.loader.set_state(out["data"])
        self.log(f"resumed from {self.ckpt_dir}/{latest} in {time.perf_counter() - t:.1f}s")
        return out["state"]

    # --- outputs ----------------------------------------------------------------------------------

    def save_sample_grid(self, name: str, grid: np.ndarray, step: int, what: str = "samples") -> str | None:
        """Process 0 writes `samples/<name>` (PNG)."""
        if self.pi != 0:
            return None
        path = os.path.join(self.out_dir, "samples", name)
        images.save_png(path, grid)
        if getattr(self, "metrics", None) is not None:
            self.metrics.log_images(what.split(" ")[0], step, np.asarray(grid))
        self.log(f"wrote {what} {path}")
        return path

    def write_samples(self, state: dict, step: int) -> str | None:
        return self.task.write_samples(self, self.built.params_for_sampling(state), step)

    def _exported_step(self) -> int | None:
        dest = os.path.join(self.out_dir, "export")
        if not checkpoint.is_checkpoint(dest):
            return None
        return checkpoint.read_metadata(dest).get("trained_steps")

    def export(self, state: dict, step: int) -> str | None:
        """Params checkpoint (EMA when kept) that `janusflow_jax.load` / `janusflow-sample` read. Every
        process calls it (each leaf gathered with all of them); process 0 writes it."""
        dest = os.path.join(self.out_dir, "export")
        ema = bool(state["ema"])
        self.task.export(self, self.built.params_for_sampling(state), step, dest, ema)
        self.log(f"exported step {step} weights{' (EMA)' if ema else ''} to {dest}")
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
        from janusflow_jax.training.metrics import MetricsLogger

        title = f"janusflow-train {self.cfg.task} stage {self.cfg.stage}"
        self.metrics = MetricsLogger(self.out_dir, total_steps=r.steps, start_step=step, enabled=self.pi == 0,
                                     log=self._log, title=title)  # fmt: skip
        last: dict[str, Any] = {}
        steps_done = 0
        t_prev = None
        while step < r.steps:
            batch_np = next(self.loader)
            if not hasattr(self, "_step"):
                self._step = self.built.jit(batch_np)
                self.log("compiling the train step …")
            batch = self.built.global_batch(_poisoned(batch_np, step + 1))
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
            self.metrics.log_step(m, write=step % r.log_every == 0 or step == r.steps or steps_done == 1)
            _fault("after_step", step)
            if step % r.save_every == 0 or step == r.steps:
                self.save(state, step)
                _fault("after_save", step)
            if r.sample_every and step % r.sample_every == 0 and step != r.steps:
                self.write_samples(state, step)
            if r.export_every and step % r.export_every == 0 and step != r.steps:
                self.export(state, step)
        self.mngr.wait_until_finished()
        if self.metrics.history:
            self.metrics.write_loss_curve()
        self._report_data()
        if steps_done:
            self.write_samples(state, step)
        if steps_done or self._exported_step() != step:  # also a run killed between its last save and export
            self.export(state, step)
        self.state = state
        return last

    def _report_data(self) -> None:
        skipped = getattr(self.loader, "skipped", None)
        truncated = getattr(self.loader, "truncated", None)
        for what, counts in (("skipped (unusable)", skipped), ("truncated to fit", truncated)):
            if counts and any(counts.values()):
                self.log(f"data: records {what} so far: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
