"""The one train step of every task: draws → (accumulated) gradients of the trainable leaves → optax → EMA.

Generic over the task's objective (`tasks.base.Objective`, a hashable frozen dataclass):
  draw(key, batch) -> dict            the step's random numbers for the whole global batch
  counts(batch) -> {part: float}      each loss part's denominator over the global batch (≥ 1)
  loss_sums(model, batch, draws)      unnormalised sums of each part over this shard's rows
  total(sums, counts) -> scalar       the weighted loss
  metrics(sums, counts) -> dict       what is logged (default: each part's mean)
Sums over a shard's rows divided by GLOBAL counts add up across shards and micro-batches, so
gradient accumulation and any sharding give the same step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from janusflow_jax.sharding import data_parallel, layerwise_leaves, param_specs
from janusflow_jax.training.state import FROZEN, merge_trainable, path_str, split_trainable


@dataclasses.dataclass(frozen=True)
class StepStatics:
    """Everything static a step needs (hashable: part of the jit cache key)."""

    objective: Any
    grad_accum: int = 1
    ema_decay: float | None = None
    layerwise_gather: bool = True  # gather stacked layers' parameters in their scan body (ZeRO-3), not up front


def _micro(tree, a: int):
    """`[B, ...]` → `[a, B/a, ...]`, micro-batch i taking rows i, i+a, i+2a, … (so a batch sharded in
    contiguous blocks gives every device an equal share of each micro-batch)."""

    def one(x):
        if x.shape[0] % a:
            raise ValueError(f"batch of {x.shape[0]} rows is not divisible by grad_accum={a}")
        return jnp.swapaxes(x.reshape((x.shape[0] // a, a) + x.shape[1:]), 0, 1)

    return jax.tree.map(one, tree)


def ema_update(ema: dict, params: dict, decay: float | None, t) -> dict:
    """The debiased exponential moving average of the weights after this run's update `t` (1, 2, …):
    the weights after update k weigh decay^(t-k), normalised — the weights the run started from not at
    all (a plain EMA started there keeps decay^t of them: 22 % after 1500 steps at 0.999, where a stage
    that trains a freshly initialised LLM would export a blend of it with its random init). Kept
    already divided, so the buffer is the average itself: m_t = d_t m_(t-1) + (1 - d_t) p_t with
    d_t = decay (1 - decay^(t-1)) / (1 - decay^t) (d_1 = 0: the first update's weights)."""
    if decay is None or not ema:
        return ema
    flat = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    t = jnp.asarray(t, jnp.float32)
    log_d = jnp.log(jnp.float32(decay))
    d = decay * jnp.expm1((t - 1.0) * log_d) / jnp.expm1(t * log_d)  # (1 - decay^(t-1)) / (1 - decay^t), exact near 1
    f32 = jnp.float32
    return {k: (d * v.astype(f32) + (1.0 - d) * flat[k].astype(f32)).astype(v.dtype) for k, v in ema.items()}


def train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    labels: dict,
    statics: StepStatics,
    state: dict,
    batch: dict,
) -> tuple[dict, dict]:
    """One optimizer step on `batch` (global arrays). Returns (new state, metrics of this step)."""
    obj = statics.objective
    key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
    draws = obj.draw(key, batch)
    denom = obj.counts(batch)
    trainable, frozen = split_trainable(state["params"], labels)

    def loss_fn(tr, fr, den, mb, md):
        model = nnx.merge(graphdef, merge_trainable(tr, fr))
        sums = obj.loss_sums(model, mb, md)
        return obj.total(sums, den), sums

    mesh = jax.sharding.get_abstract_mesh()
    specs = split_trainable(param_specs(graphdef, state["params"], mesh), labels)
    stacked = layerwise_leaves(graphdef, state["params"], mesh) if statics.layerwise_gather else None
    lw = None if stacked is None else (*split_trainable(stacked, labels), False)
    sharded_loss = data_parallel(loss_fn, (*specs, P()), lw)
    grad_fn = jax.value_and_grad(lambda tr, mb, md: sharded_loss(tr, frozen, denom, mb, md), has_aux=True)
    a = statics.grad_accum
    if a == 1:
        (loss, sums), grads = grad_fn(trainable, batch, draws)
    else:
        zero_g = jax.tree.map(jnp.zeros_like, trainable)
        first = jax.tree.map(lambda x: x[0], (_micro(batch, a), _micro(draws, a)))
        zero_s = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, trainable, *first)[0][1])

        def body(carry, xs):
            g_acc, l_acc, s_acc = carry
            (loss_i, s), g = grad_fn(trainable, *xs)
            return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss_i, jax.tree.map(jnp.add, s_acc, s)), None

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
    ema = ema_update(state["ema"], new_params, statics.ema_decay, state["step"] + 1)
    grad_leaves = [g for g in jax.tree.leaves(grads) if g is not None]
    metrics: dict[str, Any] = {"loss": loss, "grad_norm": optax.tree.norm(grad_leaves), **obj.metrics(sums, denom)}
    new_state = dict(state, step=state["step"] + 1, params=new_params, opt_state=opt_state, ema=ema)
    return new_state, metrics
