"""Train state, the trainable/frozen labels, the optimizer and the sharded state layout (any task).

The state is a plain pytree (so Orbax saves it and `jax.jit` shards and donates it):
  {"step": int32, "params": {<the task's modules>}, "opt_state": optax state,
   "ema": {dotted path: array} of the trainable leaves (empty without EMA), "key": uint32 PRNG key data}
Freezing is an `optax.partition`: frozen leaves go to `optax.set_to_zero()`, which keeps no state, and
the step never computes their gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from janusflow_jax.sharding import state_shardings

TRAIN, FROZEN = "train", "frozen"


class TrainConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    ema_decay: float | None = None  # e.g. 0.99 (the paper); None: no EMA. Debiased: `step.ema_update`
    grad_accum: int = 1


def path_str(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def labels_for(params: dict, trainable) -> dict:
    """Same tree as `params`, each leaf "train" or "frozen": `trainable(names)` decides from the
    leaf's path (a tuple of str keys, e.g. ("janus", "gen_head", "vision_head", "kernel"))."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: TRAIN if trainable(tuple(str(getattr(k, "key", k)) for k in path)) else FROZEN, params
    )


def learning_rate(o: OptimConfig):
    if o.warmup_steps <= 0:
        return optax.constant_schedule(o.lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, o.warmup_steps), optax.constant_schedule(o.lr)], [o.warmup_steps]
    )


def make_optimizer(o: OptimConfig, labels: dict) -> optax.GradientTransformation:
    inner = optax.chain(
        optax.clip_by_global_norm(o.clip_norm) if o.clip_norm else optax.identity(),
        optax.adamw(learning_rate(o), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay),
    )
    return optax.partition({TRAIN: inner, FROZEN: optax.set_to_zero()}, labels)


def split_trainable(params: dict, labels: dict) -> tuple[dict, dict]:
    """(trainable, frozen) trees with None in the other's places."""
    tr = jax.tree.map(lambda p, lab: p if lab == TRAIN else None, params, labels)
    fr = jax.tree.map(lambda p, lab: p if lab == FROZEN else None, params, labels)
    return tr, fr


def merge_trainable(tr: dict, fr: dict) -> dict:
    return jax.tree.map(lambda a, b: a if a is not None else b, tr, fr, is_leaf=lambda x: x is None)


def ema_keys(labels: dict) -> list[str]:
    flat = jax.tree_util.tree_flatten_with_path(labels)[0]
    return [path_str(p) for p, lab in flat if lab == TRAIN]


def flat_params(params: dict) -> dict[str, Any]:
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def with_ema(params: dict, ema: dict[str, Any]) -> dict:
    """`params` with the EMA values substituted where there is one."""
    return jax.tree_util.tree_map_with_path(lambda p, x: ema.get(path_str(p), x), params)


def init_state(params: dict, tx: optax.GradientTransformation, labels: dict, key: jax.Array, ema: bool) -> dict:
    flat = flat_params(params)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "ema": {k: jnp.copy(flat[k]) for k in ema_keys(labels)} if ema else {},  # own buffers (donation)
        "key": jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key,
    }


def param_shardings(abstract_modules: nnx.Module, mesh) -> dict:
    """NamedShardings of the pure-dict params, from the logical names on each nnx.Param."""
    _, st = nnx.split(abstract_modules, nnx.Param)
    return nnx.to_pure_dict(state_shardings(st, mesh))


def state_shardings_for(abstract_state: dict, p_shard: dict, tx, mesh) -> dict:
    """Shardings of the whole train state: optimizer moments and EMA follow their parameters.

    An optimizer-state leaf whose key path ends with a parameter's path (and has its shape) takes that
    parameter's sharding; anything else (step counts, masked nodes' absence) is replicated."""
    rep = NamedSharding(mesh, P())
    by_path = {tuple(str(k.key) for k in path): sh for path, sh in jax.tree_util.tree_flatten_with_path(p_shard)[0]}
    roots = set(p_shard)

    def one(path, leaf):
        keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
        for i, k in enumerate(keys):
            if k in roots:
                sh = by_path.get(tuple(keys[i:]))
                if sh is not None and len(sh.spec) <= len(getattr(leaf, "shape", ())):
                    return sh
        return rep

    opt = jax.tree_util.tree_map_with_path(one, abstract_state["opt_state"])
    flat = flat_params(p_shard)
    return {
        "step": rep,
        "params": p_shard,
        "opt_state": opt,
        "ema": {k: flat[k] for k in abstract_state["ema"]},
        "key": rep,
    }
