"""`training.build(cfg, mesh)`: a run's task, modules, sharded state layout and jitted step — what the
training loop, `train/bench.py`, `janusflow_jax.plan` and the tests all use, so none of them rebuilds
the pieces by hand.

    built = build(load_config("train/configs/janus-pro/stage2.yaml"), mesh)
    state = built.init_state()                 # sharded, initial weights where the config names them
    step = built.jit(batch)                    # jitted train step for batches shaped like `batch`
    state, metrics = step(state, built.global_batch(batch))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from janusflow_jax.sharding import make_mesh, use_mesh
from janusflow_jax.training import state as state_lib
from janusflow_jax.training.step import StepStatics, train_step
from janusflow_jax.training.tasks import task_class


@dataclasses.dataclass(frozen=True)
class TrainLayout:
    """The abstract train state of a run and how it is laid out (no arrays)."""

    labels: dict  # params tree of "train" / "frozen"
    tx: Any  # the optax transformation (frozen leaves: set_to_zero)
    state_shardings: dict
    abstract_state: dict  # ShapeDtypeStructs with their shardings
    n_train: int
    n_all: int


def train_layout(abstract, p_shard: dict, trainable, optim, seed: int, mesh) -> TrainLayout:
    """Labels (`trainable(path names) -> bool`), optimizer, shardings and abstract state of `abstract`."""
    abstract_params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        nnx.to_pure_dict(nnx.split(abstract, nnx.Param)[1]),
        p_shard,
    )
    labels = state_lib.labels_for(abstract_params, trainable)
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


@dataclasses.dataclass
class Built:
    cfg: Any  # TrainConfig
    task: Any  # tasks.base.Task
    mesh: Any
    abstract: Any  # the task's modules, abstract (eval_shape)
    graphdef: Any
    p_shard: dict
    layout: TrainLayout
    statics: StepStatics

    @property
    def step_fn(self):
        """The pure train step `(state, batch) -> (state, metrics)` (not jitted)."""
        return functools.partial(train_step, self.graphdef, self.layout.tx, self.layout.labels, self.statics)

    @property
    def labels(self) -> dict:
        return self.layout.labels

    def jit(self, batch) -> Any:
        """The jitted step for batches shaped like `batch` (arrays or ShapeDtypeStructs, global rows)."""
        self.batch_shardings = batch_shardings(batch, self.mesh)
        return jit_step(self.step_fn, self.layout.state_shardings, self.batch_shardings, self.mesh)

    def global_batch(self, batch_np: dict) -> dict:
        """This process's rows → global arrays sharded over (data, fsdp) (after `jit`)."""
        return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x), batch_np, self.batch_shardings)

    def flops_per_step(self, d=None) -> float:
        return self.task.model_flops_per_step(d or self.cfg.data)

    def tokens_per_step(self, d=None) -> float:
        return self.task.tokens_per_step(d or self.cfg.data)

    def init_params(self) -> dict:
        """Random init of every top-level module the task did not load whole, created directly sharded;
        then the loaded trees placed (`task.loaded`: path → tree, whole modules or parts of them)."""
        loaded = dict(self.task.loaded)
        whole = {path[0] for path in loaded if len(path) == 1}
        want = [k for k in self.p_shard if k not in whole]
        parts = [path for path in loaded if len(path) > 1]  # loaded parts of randomly made modules
        seed = self.cfg.model.init_seed

        def make():
            pure = nnx.to_pure_dict(nnx.split(self.task.make_modules(seed), nnx.Param)[1])
            # the loaded parts are left out of the program's outputs, so XLA drops their random init
            # (the GenEval Janus stage 1 from a trained VQ: 2.8 s instead of 13 s at -O0, the VQ's convs
            # are most of the program); every other parameter draws the same key as with them in
            # (nnx.Rngs counts in build order): bit-identical values
            return _without({k: pure[k] for k in want}, parts)

        params = {}
        if want:
            with use_mesh(self.mesh):
                shardings = _without({k: self.p_shard[k] for k in want}, parts)
                params = jax.jit(make, out_shardings=shardings)()
        for path in sorted(loaded, key=len):
            sh = self.p_shard
            for k in path:
                sh = sh[k]
            tree = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x, jnp.float32), s), loaded[path], sh)
            node = params
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = tree
        self.task.loaded = {}  # free the loaded copies
        return {k: params[k] for k in self.p_shard}

    def init_state(self) -> dict:
        params = self.init_params()
        lay = self.layout
        with use_mesh(self.mesh):
            opt_state = jax.jit(lay.tx.init, out_shardings=lay.state_shardings["opt_state"])(params)
        flat = state_lib.flat_params(params)
        use_ema = self.cfg.optim.ema_decay is not None
        ema = {k: jnp.array(flat[k], copy=True) for k in state_lib.ema_keys(lay.labels)} if use_ema else {}
        rep = NamedSharding(self.mesh, P())
        return {
            "step": jax.device_put(jnp.zeros((), jnp.int32), rep),
            "params": params,
            "opt_state": opt_state,
            "ema": ema,
            "key": jax.device_put(jax.random.key_data(jax.random.key(self.cfg.run.seed)), rep),
        }

    def params_for_sampling(self, state: dict) -> dict:
        """The state's params with the EMA values where kept."""
        return state_lib.with_ema(state["params"], state["ema"]) if state["ema"] else state["params"]


def _without(tree: dict, paths) -> dict:
    """A copy of nested dict `tree` without the subtrees at `paths` (tuples of keys)."""
    tree = dict(tree)
    for path in paths:
        node = tree
        for k in path[:-1]:
            if k not in node:
                break
            node[k] = node = dict(node[k])
        else:
            node.pop(path[-1], None)
    return tree


def build(cfg, mesh=None, *, weights: bool = True, log=None) -> Built:
    """Task, abstract modules, shardings, train layout and step statics of TrainConfig `cfg` on `mesh`
    (default: the config's mesh over this process's devices). `weights=False` reads architectures only
    (plans, benchmarks): `init_state` then starts everything random."""
    cfg = cfg.validate()
    mesh = mesh if mesh is not None else make_mesh(dataclasses.asdict(cfg.mesh))
    log = log or (lambda m: None)
    task = task_class(cfg.task)(cfg, mesh, weights=weights, log=log)
    with use_mesh(mesh):
        abstract = nnx.eval_shape(lambda: task.make_modules(0))
    graphdef, _ = nnx.split(abstract, nnx.Param)
    p_shard = state_lib.param_shardings(abstract, mesh)
    layout = train_layout(abstract, p_shard, task.trainable, cfg.optim, cfg.run.seed, mesh)
    statics = StepStatics(task.objective(), cfg.optim.grad_accum, cfg.optim.ema_decay, cfg.model.fsdp_gather == "layer")
    return Built(cfg, task, mesh, abstract, graphdef, p_shard, layout, statics)
