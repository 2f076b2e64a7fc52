"""The jitted train step: draws → (accumulated) gradients of the trainable leaves → optax → EMA."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from janusflow_jax.sharding import data_parallel, param_specs
from janusflow_jax.training import objective
from janusflow_jax.training.objective import ObjectiveConfig
from janusflow_jax.training.state import FROZEN, merge_trainable, path_str, split_trainable


@dataclasses.dataclass(frozen=True)
class StepStatics:
    """Everything static a step needs (hashable: part of the jit cache key)."""

    ocfg: ObjectiveConfig
    latent_shape: tuple[int, int, int]
    num_gen_tokens: int
    grad_accum: int = 1
    ema_decay: float | None = None


def _micro(tree, a: int):
    """`[B, ...]` → `[a, B/a, ...]`, micro-batch i taking rows i, i+a, i+2a, … (so a batch sharded in
    contiguous blocks gives every device an equal share of each micro-batch)."""

    def one(x):
        if x.shape[0] % a:
            raise ValueError(f"batch of {x.shape[0]} rows is not divisible by grad_accum={a}")
        return jnp.swapaxes(x.reshape((x.shape[0] // a, a) + x.shape[1:]), 0, 1)

    return jax.tree.map(one, tree)


def train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    labels: dict,
    statics: StepStatics,
    state: dict,
    batch: dict,
) -> tuple[dict, dict]:
    """One optimizer step on `batch` (global arrays). Returns (new state, metrics of this step)."""
    ocfg = statics.ocfg
    key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
    draws = objective.draw(key, batch, statics.latent_shape, ocfg)
    denom = objective.counts(batch, statics.latent_shape, statics.num_gen_tokens)
    trainable, frozen = split_trainable(state["params"], labels)

    def loss_fn(tr, fr, den, mb, md):
        # sums over this shard's rows divided by GLOBAL counts: adding the shards' values gives the total
        model = nnx.merge(graphdef, merge_trainable(tr, fr))
        sums = objective.loss_sums(model, mb, md, ocfg)
        return objective.weighted_total(sums, den, ocfg), sums

    mesh = jax.sharding.get_abstract_mesh()
    specs = split_trainable(param_specs(graphdef, state["params"], mesh), labels)
    sharded_loss = data_parallel(loss_fn, (*specs, P()))
    grad_fn = jax.value_and_grad(lambda tr, mb, md: sharded_loss(tr, frozen, denom, mb, md), has_aux=True)
    a = statics.grad_accum
    if a == 1:
        (loss, sums), grads = grad_fn(trainable, batch, draws)
    else:
        zero_g = jax.tree.map(jnp.zeros_like, trainable)
        zero_s = {k: jnp.float32(0.0) for k in denom}

        def body(carry, xs):
            g_acc, l_acc, s_acc = carry
            (l, s), g = grad_fn(trainable, *xs)
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, {k: s_acc[k] + s[k] for k in s}), None

        (grads, loss, sums), _ = jax.lax.scan(
            body, (zero_g, jnp.float32(0.0), zero_s), (_micro(batch, a), _micro(draws, a))
        )

    params = state["params"]
    full_grads = jax.tree.map(
        lambda g, p: jnp.zeros_like(p) if g is None else g, grads, params, is_leaf=lambda x: x is None
    )
    updates, opt_state = tx.update(full_grads, state["opt_state"], params)
    new_params = jax.tree.map(
        lambda p, u, lab: p if lab == FROZEN else (p + u).astype(p.dtype), params, updates, labels
    )
    ema = state["ema"]
    if statics.ema_decay is not None and ema:
        decay = statics.ema_decay
        flat_new = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(new_params)[0]}
        ema = {k: (decay * v + (1.0 - decay) * flat_new[k]).astype(v.dtype) for k, v in ema.items()}
    grad_leaves = [g for g in jax.tree.leaves(grads) if g is not None]
    metrics: dict[str, Any] = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grad_leaves),
        **{k: sums[k] / denom[k] for k in sums},
    }
    new_state = dict(state, step=state["step"] + 1, params=new_params, opt_state=opt_state, ema=ema)
    return new_state, metrics
