"""The task protocol every training task implements, and the pieces the LLM tasks share.

A task (one instance per run) knows its model family: it reads the architecture and the initial
weights named by the config's `model` section, builds the modules a step touches, says which leaves
each stage trains, supplies the objective the generic step (`training.step.train_step`) evaluates,
counts FLOPs and tokens, and writes samples and the export. Everything else — data, sharded state,
checkpoints, resume, NaN stop, logging — is the generic loop's (`training.trainer`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from janusflow_jax.nn.llama import positions_from_mask
from janusflow_jax.training import losses
from janusflow_jax.training.state import TrainConfigError


class Task:
    name: ClassVar[str]
    stages: ClassVar[dict[str, tuple[str, ...]]]  # stage → trainable submodules (see `trainable`)
    default_stage: ClassVar[str]
    data_kinds: ClassVar[tuple[str, ...]]  # the row kinds of data.mix this task trains on
    loss_keys: ClassVar[tuple[str, ...]]  # metric names of the loss parts (curves, progress line)

    # set by __init__
    cfg: Any  # TrainConfig
    mesh: Any
    processor: Any = None  # janusflow_jax.processing.Processor, or None (image-only tasks without one)
    processor_dir: str | None = None
    gen_image_size: int = 0
    loaded: dict  # params path (tuple of keys) → tree of initial weights there (the rest starts random)

    @classmethod
    def check_model(cls, m) -> None:
        """TrainConfigError when the `model` section cannot give this task an architecture."""

    def make_modules(self, seed: int):
        """The nnx.Module whose Params are the train state's params (called under eval_shape too)."""
        raise NotImplementedError

    def trainable(self, names: tuple[str, ...]) -> bool:
        """Does the leaf at `names` (params path) train in `self.cfg.stage`?"""
        raise NotImplementedError

    def objective(self):
        raise NotImplementedError

    def model_flops_per_step(self, d) -> float:
        """Model FLOPs of one step on the global batch `d.mix` (a DataConfig)."""
        raise NotImplementedError

    def tokens_per_step(self, d) -> float:
        raise NotImplementedError

    def abstract_batch(self, d, rows: dict[str, int]) -> dict:
        """ShapeDtypeStructs of one global batch of `rows` per kind, in the loader's layout."""
        return abstract_batch(d, rows, self.gen_image_size, getattr(self, "und_image_size", 0))

    def write_samples(self, run, params: dict, step: int) -> str | None:
        return None

    def export(self, run, params: dict, step: int, dest: str, ema: bool) -> str | None:
        raise NotImplementedError


# --- shared by the tasks --------------------------------------------------------------------------


def read_processor(m, init_from: str | None, family: str):
    """(Processor, folder) from `model.processor`, else the initial model's folder; (None, None) if neither."""
    from janusflow_jax.processing import Processor

    folder = m.processor or (init_from if init_from and os.path.isfile(os.path.join(init_from, "tokenizer.json"))
                             else None)  # fmt: skip
    if folder is None:
        return None, None
    return Processor.from_pretrained(folder, family), folder


def und_normalisation(processor) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """(mean, std, image size) of the processor's SigLIP input (identity when it does not normalise)."""
    norm = processor.do_normalize and processor.image_mean is not None
    mean = tuple(float(x) for x in processor.image_mean) if norm else (0.0,) * 3
    std = tuple(float(x) for x in processor.image_std) if norm else (1.0,) * 3
    return mean, std, int(processor.image_size)


def to_unit(images_u8: jax.Array) -> jax.Array:
    """uint8 `[..., 3]` → float32 in [-1, 1]."""
    return images_u8.astype(jnp.float32) / 127.5 - 1.0


def lm_counts(batch: dict) -> dict:
    """Denominators of the next-token parts (und, text): the global number of predicted tokens, ≥ 1."""
    return {k: jnp.maximum(jnp.sum(batch[k]["loss_mask"][:, 1:].astype(jnp.float32)), 1.0)
            for k in ("und", "text") if k in batch}  # fmt: skip


def lm_sum(model, rows: dict, image_slots: int | None) -> jax.Array:
    """Next-token cross-entropy sum of understanding rows (`image_slots` embeddings per image spliced in
    through the model's `prepare_inputs_embeds`) or text rows (`image_slots` None). `model` is a
    JanusFlow or a Janus: both have `language_model` and `prepare_inputs_embeds`."""
    ids, mask = rows["ids"], rows["mask"]
    if image_slots is not None:
        b = ids.shape[0]
        emb = model.prepare_inputs_embeds(ids, rows["pixel_values"][:, None], rows["images_seq_mask"],
                                          jnp.ones((b, 1, image_slots), jnp.bool_))  # fmt: skip
    else:
        emb = model.language_model.embed(ids)
    hidden = model.language_model.model.forward(emb, positions_from_mask(mask, ids.shape), mask).hidden
    return losses.next_token_sum(model.language_model.logits(hidden), ids, rows["loss_mask"])[0]


def lm_sums(model, batch: dict, image_slots: int) -> dict:
    out = {}
    if "und" in batch:
        out["und"] = lm_sum(model, batch["und"], image_slots)
    if "text" in batch:
        out["text"] = lm_sum(model, batch["text"], None)
    return out


def lm_flops(llm_cfg, siglip_cfg, d) -> float:
    """Forward FLOPs of the understanding and text rows of `d.mix`."""
    from janusflow_jax import flops

    mix, out = d.mix, 0.0
    if mix.und:
        out += flops.siglip_flops(siglip_cfg, mix.und) + flops.llm_flops(llm_cfg, mix.und, d.und_len,
                                                                          lm_head_tokens=d.und_len)  # fmt: skip
    if mix.text:
        out += flops.llm_flops(llm_cfg, mix.text, d.text_len, lm_head_tokens=d.text_len)
    return out


@dataclasses.dataclass(frozen=True)
class Objective:
    """Base of the tasks' objectives: weighted sum of each part's mean; metrics are the means."""

    def draw(self, key, batch: dict) -> dict:
        return {}

    def weights(self) -> dict[str, float]:
        return {}

    def total(self, sums: dict, denom: dict) -> jax.Array:
        w = self.weights()
        return sum(w.get(k, 1.0) * sums[k] / denom[k] for k in denom)

    def metrics(self, sums: dict, denom: dict) -> dict:
        return {k: sums[k] / denom[k] for k in denom}


def abstract_batch(d, rows: dict[str, int], gen_size: int, und_size: int) -> dict:
    """ShapeDtypeStructs of one global batch in the loader's layout (janusflow_jax/data/pipeline.py)."""
    S = jax.ShapeDtypeStruct
    i32, f32 = jnp.int32, jnp.float32
    b = {}
    if rows.get("gen"):
        g = rows["gen"]
        b["gen"] = {"prompt_ids": S((g, d.gen_prompt_len), i32), "prompt_mask": S((g, d.gen_prompt_len), i32),
                    "image": S((g, gen_size, gen_size, 3), jnp.uint8)}  # fmt: skip
    if rows.get("und"):
        u, L = rows["und"], d.und_len
        b["und"] = {"ids": S((u, L), i32), "mask": S((u, L), i32), "loss_mask": S((u, L), f32),
                    "pixel_values": S((u, und_size, und_size, 3), f32),
                    "images_seq_mask": S((u, L), jnp.bool_)}  # fmt: skip
    if rows.get("text"):
        t, L = rows["text"], d.text_len
        b["text"] = {"ids": S((t, L), i32), "mask": S((t, L), i32), "loss_mask": S((t, L), f32)}
    return b


def host_tree(tree) -> dict:
    """Every leaf whole on this host, as NumPy. In a multi-process run each process takes part in every
    leaf's gather (one leaf at a time) and every process ends up with the whole tree."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)


def num_params(tree) -> int:
    return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise TrainConfigError(msg)
