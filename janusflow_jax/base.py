"""What every family's loaded-model object shares: the processor, the mesh, the LLM and
understanding entry points (`llm_logits`, `understanding_logits`, `generate_text`, `answer`),
placement of host parameters on the mesh, and compile/run timing.

A family's model object is a dataclass with at least `cfg` (with `.llm`), `graphdef`, `params`
(the multimodal module, which has `language_model` and `prepare_inputs_embeds`), `mesh`,
`processor_dir`, `pad_id`, `eos_id`, `bos_id`; it inherits these methods from `ModelBase`.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow_jax.nn.llama import positions_from_mask
from janusflow_jax.sampling import text as text_sampling
from janusflow_jax.sampling.decode import narrow_floats, stream_choice
from janusflow_jax.sharding import state_shardings

__all__ = ["ModelBase", "LoadError", "special_ids", "place_params", "restore_target"]


class LoadError(ValueError):
    pass


def place_params(abstract, pure: dict, mesh) -> tuple[Any, Any]:
    """Put a nested dict of host arrays into the abstract module's Param state, sharded."""
    graphdef, state = nnx.split(abstract, nnx.Param)
    shardings = nnx.to_pure_dict(state_shardings(state, mesh))
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x, s: jax.device_put(x, s), pure, shardings))
    return graphdef, state


def restore_target(abstract, mesh) -> dict:
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
    return lm.logits(lm.model.forward(lm.embed(ids), positions_from_mask(mask, ids.shape), mask).hidden)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _understanding_logits(graphdef, params, ids, pixels, seq_mask, emb_mask, mask):
    m = nnx.merge(graphdef, params)
    embeds = m.prepare_inputs_embeds(ids, pixels, seq_mask, emb_mask)
    hidden = m.language_model.model.forward(embeds, positions_from_mask(mask, ids.shape), mask).hidden
    return m.language_model.logits(hidden)


@functools.partial(jax.jit, static_argnames=("graphdef", "opts"))
def _generate_text(graphdef, params, ids, pixels, seq_mask, emb_mask, mask, key, temperature, top_p, opts):
    m = nnx.merge(graphdef, params)
    embeds = m.prepare_inputs_embeds(ids, pixels, seq_mask, emb_mask)
    return text_sampling.generate(m.language_model, embeds, mask, key, opts, temperature, top_p)


def _compiler_options(leaves) -> dict | None:
    """XLA:CPU with weights narrower than float32: no loop-invariant code motion. CPU dots widen
    bfloat16 operands to float32, and that pass lifts the widening of every loop-invariant weight
    out of its loop — of whole layer stacks out of the layer scan — so the program would hold a
    float32 copy of the weights (Janus-Pro-7B: 2× its 14 GB). Left in the loop, one layer is
    widened at a time (a toy 30-layer scan: temporaries 2.0× → 0.03× the stack's bytes)."""
    arrays = [a for a in leaves if isinstance(a, jax.Array)]
    if not arrays or any(d.platform != "cpu" for d in arrays[0].devices()):
        return None
    if not narrow_floats(arrays):
        return None
    return {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


class ModelBase:
    """Methods shared by `JanusFlowModel` and `JanusModel` (see the module docstring)."""

    family: str = ""
    # how token loops read the layers' weights (`sampling.decode.DECODE_WEIGHTS`): "auto" streams them
    # where that saves memory (narrow weights on XLA:CPU), "streamed" everywhere (TPU/GPU: one layer's
    # weights live at a time instead of a sliced copy of them all), "sliced" never
    decode_weights: str = "auto"

    @property
    def _stream(self) -> bool | None:
        return stream_choice(self.decode_weights)

    @property
    def module(self):
        """The merged nnx module (eager use, tests)."""
        return nnx.merge(self.graphdef, self.params)

    @property
    def dtype(self):
        return jnp.dtype(self.cfg.llm.dtype)

    # --- the parity surface shared by the families -----------------------------------------

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
        top_k: int | None = None,
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
            top_k=None if top_k is None else int(top_k),
            keep_logits=bool(return_logits),
            nucleus=float(top_p) < 1.0,
            stream=self._stream,
        )
        out = self._run(
            _generate_text,
            self.graphdef,
            self.params,
            *inputs,
            jax.random.key(seed),
            jnp.float32(temperature),
            jnp.float32(top_p),
            opts=opts,
        )
        return (out.tokens, out.logits) if return_logits else out.tokens

    # --- the high-level API ------------------------------------------------------------------

    def _run(self, fn, *args, **static):
        """Call jitted `fn`, compiling ahead of time once per input signature, and record the
        seconds spent compiling and running in `self.timings` (for progress reports and benchmarks)."""
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
            cache[sig] = fn.lower(*args, **static).compile(compiler_options=_compiler_options(leaves))
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
        return Processor.from_pretrained(self.processor_dir, family=self.family)

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


def special_ids(folder: str | None) -> dict[str, int]:
    """BOS/EOS/pad ids read from `folder/tokenizer.json` (never assumed); {} without a tokenizer.
    Pad falls back to EOS where the vocabulary has no pad token (the official JanusFlow processor)."""
    path = None if folder is None else os.path.join(folder, "tokenizer.json")
    if path is None or not os.path.isfile(path):
        return {}
    from tokenizers import Tokenizer

    from janusflow_jax.processing import BOS_TEXT, EOS_TEXT, PAD_TEXT

    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers library raises plain Exceptions
        raise LoadError(f"{path}: cannot be read ({e})") from None
    found = {f: tok.token_to_id(t) for f, t in (("bos_id", BOS_TEXT), ("eos_id", EOS_TEXT), ("pad_id", PAD_TEXT))}
    out = {f: int(i) for f, i in found.items() if i is not None}
    if "pad_id" not in out and "eos_id" in out:
        out["pad_id"] = out["eos_id"]
    return out
