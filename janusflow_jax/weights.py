"""Official PyTorch state-dict names → JAX parameter paths, with layout transforms (no torch import).

A table of `Rule(pattern, target, transform)`: `pattern` is a regex that must match a whole torch
key; `target` is the dotted JAX path, where `{1}`, `{2}` … are the pattern's groups; a `*` in the
target marks the stacked `layers` axis, filled by group 1 (the torch layer index).

Transforms (validated against the target leaf's shape; any mismatch raises):
  identity   same shape
  linear     torch [out, in] → [in, out]
  heads_in   torch [N·H, D] → [D, N, H]          (q/k/v projections, fused qkv → [D, 3, N, H])
  heads_out  torch [D, N·H] → [N, H, D]          (attention output projections)
  conv       torch OIHW → HWIO
  squeeze    drop leading size-1 axes            (GRN (1,1,1,C) → (C,), pos_embed (1,N,W) → (N,W))
  conv1x1_linear torch [O, I, 1, 1] → [I, O]     (1×1 convs stored as Linear in JAX)

Parts: `Rule(..., part=(axis, index))` fills one slice of the target, `target[..., index, ...]` along
`axis` of the leaf (of each layer's leaf for a stacked target); the transform sees the leaf's shape
without that axis. Separate q/k/v tensors fill a fused `[D, 3, N, H]` leaf this way (axis 1).

Export (`janusflow_jax.export`) runs these tables backwards; `squeeze` alone loses the torch rank,
so its rules state it (`torch_ndim`).

Strictness: every source key is matched by a rule or by IGNORED, every target leaf is filled exactly
once (every layer of a stack, every part of a part-filled leaf), shapes are asserted, and the whole
gap is reported at once.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np

__all__ = [
    "Rule",
    "stamp",
    "stamp_ignored",
    "LLAMA_RULES",
    "LLAMA_IGNORED",
    "SIGLIP_RULES",
    "SIGLIP_IGNORED",
    "JANUSFLOW_RULES",
    "JANUSFLOW_IGNORED",
    "VAE_RULES",
    "VAE_IGNORED",
    "VQ_RULES",
    "VQ_IGNORED",
    "ConversionError",
    "convert_state_dict",
    "flatten_params",
    "unflatten_params",
    "param_targets",
    "load_params",
]


class ConversionError(ValueError):
    """Source tensors and target parameters do not line up."""


@dataclasses.dataclass(frozen=True)
class Rule:
    pattern: str
    target: str
    transform: str = "identity"
    part: tuple[int, int] | None = None  # (axis, index): fills only that slice of the (per-layer) leaf
    torch_ndim: int | None = None  # squeeze: the torch tensor's rank (the export restores the leading 1s)


def stamp(rules: Iterable[Rule], torch_prefix: str, jax_prefix: str) -> tuple[Rule, ...]:
    """A table written relative to one module, placed under a prefix of the whole model: the torch
    prefix is prepended to every pattern (escaped), the JAX prefix to every target (`{n}` groups and
    the `*` layer marker keep their meaning)."""
    tp = re.escape(torch_prefix)
    jp = jax_prefix + "." if jax_prefix and not jax_prefix.endswith(".") else jax_prefix
    return tuple(dataclasses.replace(r, pattern=tp + r.pattern, target=jp + r.target) for r in rules)


def stamp_ignored(patterns: Iterable[str], torch_prefix: str) -> tuple[str, ...]:
    return tuple(re.escape(torch_prefix) + p for p in patterns)


# --- the JanusFlow table -----------------------------------------------------------------------

# The shared pieces, written relative to their module and stamped onto each family's prefix.
_LAYER = r"model\.layers\.(\d+)\."
LLAMA_RULES: tuple[Rule, ...] = (  # a transformers LlamaForCausalLM (stacked layers, heads split out)
    Rule(r"model\.embed_tokens\.weight", "model.embed_tokens.embedding"),
    Rule(_LAYER + r"self_attn\.q_proj\.weight", "model.layers.*.self_attn.q_proj", "heads_in"),
    Rule(_LAYER + r"self_attn\.k_proj\.weight", "model.layers.*.self_attn.k_proj", "heads_in"),
    Rule(_LAYER + r"self_attn\.v_proj\.weight", "model.layers.*.self_attn.v_proj", "heads_in"),
    Rule(_LAYER + r"self_attn\.o_proj\.weight", "model.layers.*.self_attn.o_proj", "heads_out"),
    Rule(_LAYER + r"mlp\.gate_proj\.weight", "model.layers.*.mlp.gate_proj", "linear"),
    Rule(_LAYER + r"mlp\.up_proj\.weight", "model.layers.*.mlp.up_proj", "linear"),
    Rule(_LAYER + r"mlp\.down_proj\.weight", "model.layers.*.mlp.down_proj", "linear"),
    Rule(_LAYER + r"input_layernorm\.weight", "model.layers.*.input_layernorm.weight"),
    Rule(_LAYER + r"post_attention_layernorm\.weight", "model.layers.*.post_attention_layernorm.weight"),
    Rule(r"model\.norm\.weight", "model.norm.weight"),
    Rule(r"lm_head\.weight", "lm_head", "linear"),
)
LLAMA_IGNORED: tuple[str, ...] = (  # non-persistent RoPE buffers that some exporters still write
    r"model\.rotary_emb\.inv_freq",
    r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
)

_BLOCK = r"blocks\.(\d+)\."
SIGLIP_RULES: tuple[Rule, ...] = (  # the official siglip_vit.VisionTransformer (stacked blocks, fused qkv)
    Rule(r"pos_embed", "pos_embed", "squeeze", torch_ndim=3),
    Rule(r"patch_embed\.proj\.weight", "patch_embed.proj.kernel", "conv"),
    Rule(r"patch_embed\.proj\.bias", "patch_embed.proj.bias"),
    Rule(_BLOCK + r"(norm1|norm2)\.(weight|bias)", "blocks.*.{2}.{3}"),
    Rule(_BLOCK + r"attn\.qkv\.weight", "blocks.*.attn.qkv", "heads_in"),
    Rule(_BLOCK + r"attn\.qkv\.bias", "blocks.*.attn.qkv_bias", "heads_bias"),
    Rule(_BLOCK + r"attn\.proj\.weight", "blocks.*.attn.proj", "heads_out"),
    Rule(_BLOCK + r"attn\.proj\.bias", "blocks.*.attn.proj_bias"),
    Rule(_BLOCK + r"mlp\.(fc1|fc2)\.weight", "blocks.*.mlp.{2}.kernel", "linear"),
    Rule(_BLOCK + r"mlp\.(fc1|fc2)\.bias", "blocks.*.mlp.{2}.bias"),
    Rule(r"norm\.(weight|bias)", "norm.{1}"),
)
# timm AttentionPoolLatent head of the SigLIP tower: built (global_pool="map") and stored, but the
# tower runs with ignore_head=True, so it never touches an output.
SIGLIP_IGNORED: tuple[str, ...] = (r"attn_pool\..*",)

_SIG = "vision_und_enc_model.vision_tower."
_CNX = r"(vision_gen_enc_model|vision_gen_dec_model)\.mid_block\.res_blocks\.(\d+)\."

JANUSFLOW_RULES: tuple[Rule, ...] = (
    *stamp(LLAMA_RULES, "language_model.", "language_model"),
    *stamp(SIGLIP_RULES, _SIG, _SIG[:-1]),
    # aligners and the understanding begin-of-image embedding
    Rule(r"(vision_und_enc_aligner|vision_gen_enc_aligner|vision_gen_dec_aligner)\.weight", "{1}.kernel", "linear"),
    Rule(r"(vision_und_enc_aligner|vision_gen_enc_aligner|vision_gen_dec_aligner)\.bias", "{1}.bias"),
    Rule(r"vision_gen_dec_aligner_norm\.weight", "vision_gen_dec_aligner_norm.weight"),
    Rule(r"beg_of_und_embed", "beg_of_und_embed"),
    # ShallowUViT encoder / decoder
    Rule(
        r"vision_gen_enc_model\.time_embed\.(linear_1|linear_2)\.weight",
        "vision_gen_enc_model.time_embed.{1}.kernel",
        "linear",
    ),
    Rule(r"vision_gen_enc_model\.time_embed\.(linear_1|linear_2)\.bias", "vision_gen_enc_model.time_embed.{1}.bias"),
    Rule(r"vision_gen_enc_model\.in_conv\.weight", "vision_gen_enc_model.in_conv.kernel", "conv"),
    Rule(r"vision_gen_enc_model\.in_conv\.bias", "vision_gen_enc_model.in_conv.bias"),
    Rule(_CNX + r"depthwise\.weight", "{1}.mid_block.res_blocks.{2}.depthwise.kernel", "conv"),
    Rule(_CNX + r"depthwise\.bias", "{1}.mid_block.res_blocks.{2}.depthwise.bias"),
    Rule(_CNX + r"norm\.weight", "{1}.mid_block.res_blocks.{2}.norm.weight"),
    Rule(
        _CNX + r"(channelwise_linear_1|channelwise_linear_2|cond_embeds_mapper)\.weight",
        "{1}.mid_block.res_blocks.{2}.{3}.kernel",
        "linear",
    ),
    Rule(
        _CNX + r"(channelwise_linear_1|channelwise_linear_2|cond_embeds_mapper)\.bias",
        "{1}.mid_block.res_blocks.{2}.{3}.bias",
    ),
    Rule(
        _CNX + r"channelwise_norm\.(weight|bias)",
        "{1}.mid_block.res_blocks.{2}.channelwise_norm.{3}",
        "squeeze",
        torch_ndim=4,
    ),
    Rule(r"vision_gen_dec_model\.input_norm\.weight", "vision_gen_dec_model.input_norm.weight"),
    Rule(r"vision_gen_dec_model\.out_convs\.(\d+)\.norm\.weight", "vision_gen_dec_model.out_convs.{1}.norm.weight"),
    Rule(
        r"vision_gen_dec_model\.out_convs\.(\d+)\.unpatch_conv\.weight",
        "vision_gen_dec_model.out_convs.{1}.unpatch_conv.kernel",
        "conv",
    ),
    Rule(
        r"vision_gen_dec_model\.out_convs\.(\d+)\.unpatch_conv\.bias",
        "vision_gen_dec_model.out_convs.{1}.unpatch_conv.bias",
    ),
)

# Stored in the official checkpoint but never used by the official forward passes.
JANUSFLOW_IGNORED: tuple[str, ...] = (
    *stamp_ignored(SIGLIP_IGNORED, _SIG),
    *stamp_ignored(LLAMA_IGNORED, "language_model."),
)

# --- the diffusers AutoencoderKL table ---------------------------------------------------------

_VCONV = r"((?:(?:encoder|decoder)\.(?:.*\.)?)?(?:conv_in|conv_out|conv1|conv2|conv_shortcut|conv|quant_conv|post_quant_conv))"
_VATT = r"((?:encoder|decoder)\.mid_block\.attentions\.0)\."
_VATT_OLD = (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0"))

VAE_RULES: tuple[Rule, ...] = (
    Rule(_VCONV + r"\.weight", "{1}.kernel", "conv"),
    Rule(_VCONV + r"\.bias", "{1}.bias"),
    Rule(r"(.*(?:norm1|norm2|group_norm|conv_norm_out))\.(weight|bias)", "{1}.{2}"),
    Rule(_VATT + r"(to_q|to_k|to_v|to_out\.0)\.weight", "{1}.{2}.kernel", "linear"),
    Rule(_VATT + r"(to_q|to_k|to_v|to_out\.0)\.bias", "{1}.{2}.bias"),
    # names written by diffusers < 0.14 for the same attention
    *(Rule(_VATT + old + r"\.weight", "{1}." + new + ".kernel", "linear") for old, new in _VATT_OLD),
    *(Rule(_VATT + old + r"\.bias", "{1}." + new + ".bias") for old, new in _VATT_OLD),
)
VAE_IGNORED: tuple[str, ...] = ()

# --- the LlamaGen VQ table ---------------------------------------------------------------------
# Relative to the VQ module (`janusflow_jax.nn.vq.VQModel`); the Janus table stamps it under
# "gen_vision_model.". Every conv keeps its HWIO layout except the attention q/k/v/proj_out 1×1
# convs, stored as Linear.

_QRES = r"((?:encoder|decoder)\.(?:conv_blocks\.\d+\.res|mid)\.\d+)\."
_QATT = r"((?:encoder|decoder)\.(?:conv_blocks\.\d+\.attn|mid)\.\d+)\."
_QCONV = r"((?:encoder|decoder)\.(?:conv_in|conv_out)|quant_conv|post_quant_conv"
_QCONV += r"|encoder\.conv_blocks\.\d+\.downsample\.conv|decoder\.conv_blocks\.\d+\.upsample\.conv)"

VQ_RULES: tuple[Rule, ...] = (
    Rule(_QCONV + r"\.weight", "{1}.kernel", "conv"),
    Rule(_QCONV + r"\.bias", "{1}.bias"),
    Rule(_QRES + r"(conv1|conv2|nin_shortcut)\.weight", "{1}.{2}.kernel", "conv"),
    Rule(_QRES + r"(conv1|conv2|nin_shortcut)\.bias", "{1}.{2}.bias"),
    Rule(_QRES + r"(norm1|norm2)\.(weight|bias)", "{1}.{2}.{3}"),
    Rule(_QATT + r"norm\.(weight|bias)", "{1}.norm.{2}"),
    Rule(_QATT + r"(q|k|v|proj_out)\.weight", "{1}.{2}.kernel", "conv1x1_linear"),
    Rule(_QATT + r"(q|k|v|proj_out)\.bias", "{1}.{2}.bias"),
    Rule(r"(encoder|decoder)\.norm_out\.(weight|bias)", "{1}.norm_out.{2}"),
    Rule(r"quantize\.embedding\.weight", "quantize.embedding"),
)
# The codebook-usage statistics buffer: written by the official training code, never read at inference.
VQ_IGNORED: tuple[str, ...] = (r"quantize\.codebook_used",)


# --- machinery ---------------------------------------------------------------------------------


_FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def _parse_path(dotted: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def flatten_params(tree: Mapping) -> dict[tuple, object]:
    """Nested dict → {path tuple: leaf}."""
    out: dict[tuple, object] = {}

    def rec(node, prefix):
        if isinstance(node, Mapping):
            for k, v in node.items():
                rec(v, prefix + (k,))
        else:
            out[prefix] = node

    rec(tree, ())
    return out


def unflatten_params(flat: Mapping[tuple, object]) -> dict:
    root: dict = {}
    for path, leaf in flat.items():
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return root


def _apply(transform: str, a: np.ndarray, want: tuple[int, ...], key: str) -> np.ndarray:
    def fail():
        raise ConversionError(f"{key}: shape {a.shape} does not fit target {want} ({transform})")

    if transform == "identity":
        out = a
    elif transform == "linear":
        if a.ndim != 2:
            fail()
        out = a.T
    elif transform == "heads_in":  # [X·N·H, D] -> [D, (X,) N, H]
        if a.ndim != 2 or a.shape[1] != want[0] or a.shape[0] != int(np.prod(want[1:])):
            fail()
        out = a.T.reshape(want)
    elif transform == "heads_bias":  # [X·N·H] -> [(X,) N, H]
        if a.ndim != 1 or a.shape[0] != int(np.prod(want)):
            fail()
        out = a.reshape(want)
    elif transform == "heads_out":  # [D, N·H] -> [N, H, D]
        if a.ndim != 2 or a.shape[0] != want[-1] or a.shape[1] != int(np.prod(want[:-1])):
            fail()
        out = a.T.reshape(want)
    elif transform == "conv":
        if a.ndim != 4:
            fail()
        out = a.transpose(2, 3, 1, 0)
    elif transform == "conv1x1_linear":
        if a.ndim != 4 or a.shape[2:] != (1, 1):
            fail()
        out = a[:, :, 0, 0].T
    elif transform == "squeeze":
        extra = a.ndim - len(want)
        if extra < 0 or any(s != 1 for s in a.shape[:extra]):
            fail()
        out = a.reshape(a.shape[extra:])
    else:
        raise ConversionError(f"unknown transform {transform!r}")
    if tuple(out.shape) != tuple(want):
        fail()
    return out


def convert_state_dict(
    keys: Iterable[str],
    get: Callable[[str], np.ndarray],
    targets: Mapping[tuple, tuple[tuple[int, ...], np.dtype]],
    rules: Iterable[Rule],
    ignored: Iterable[str] = (),
    *,
    dtype: np.dtype | None = None,
    source: str = "checkpoint",
    on_tensor: Callable[[str], None] | None = None,
    materialize: bool = True,
    sink: Callable[[tuple, tuple, np.ndarray], None] | None = None,
) -> dict[tuple, np.ndarray]:
    """Map source tensors onto `targets` ({path: (shape, dtype)}); returns {path: np.ndarray}.

    Reads one tensor at a time through `get`; stacked leaves are assembled in a preallocated array,
    so peak memory is about one copy of the weights. `dtype` (default: the target's dtype) is the
    output dtype. Raises ConversionError listing every unmatched key, unfilled leaf and mismatch.
    `materialize=False` checks the mapping only (values are not kept; shapes are still verified).
    `sink(path, index, value)`: each converted value is handed over instead of kept (the returned
    dict then holds None): `index` places it in the leaf (`()` whole, `(layer,)`, or a part
    `(layer?, :, …, idx)`); `value` is cast without a copy where the dtype already matches.
    """
    if sink is not None:
        materialize = False
    rules = [(re.compile(r.pattern), r) for r in rules]
    ignored = [re.compile(p) for p in ignored]
    out: dict[tuple, np.ndarray] = {}
    filled: dict[tuple, set] = {}  # stacked leaves: the layers filled whole
    parts: dict[tuple, tuple[int, set]] = {}  # part-filled leaves: (axis, {(layer or None, index)})
    unmatched, problems = [], []
    for key in keys:
        hit = None
        for rx, rule in rules:
            m = rx.fullmatch(key)
            if m:
                hit = (m, rule)
                break
        if hit is None:
            if not any(rx.fullmatch(key) for rx in ignored):
                unmatched.append(key)
            continue
        m, rule = hit
        groups = m.groups()
        stacked = "*" in rule.target
        path_str = rule.target.format(None, *groups).replace("*", "__L__")
        path = tuple("*" if p == "__L__" else p for p in _parse_path(path_str))
        if stacked:
            layer = int(groups[0])
            path = tuple(p for p in path if p != "*")
        if path not in targets:
            problems.append(f"{key} → {'.'.join(map(str, path))}: no such parameter in the model")
            continue
        shape, tdtype = targets[path]
        odt = np.dtype(dtype or tdtype)
        name = ".".join(map(str, path))
        try:
            a = get(key)
            if np.dtype(a.dtype).name not in _FLOAT_DTYPES:
                raise ConversionError(
                    f"{key}: dtype {np.dtype(a.dtype).name} is not a floating weight dtype {_FLOAT_DTYPES}"
                )
            if stacked and not 0 <= layer < shape[0]:
                problems.append(f"{key}: layer index {layer} out of range for {shape[0]} layers")
                continue
            leaf = tuple(shape[1:]) if stacked else tuple(shape)
            if rule.part is not None:
                axis, idx = rule.part
                if not (0 <= axis < len(leaf) and 0 <= idx < leaf[axis]):
                    problems.append(f"{key}: part {idx} of axis {axis} does not exist in {name} {leaf}")
                    continue
                val = _apply(rule.transform, a, leaf[:axis] + leaf[axis + 1 :], key)
                lay = layer if stacked else None
                p_axis, got = parts.setdefault(path, (axis, set()))
                if p_axis != axis:
                    problems.append(f"{key}: {name} is filled in parts along axis {p_axis}, not {axis}")
                    continue
                if path in out and path not in filled and not got:
                    problems.append(f"{key}: parameter {name} filled twice")  # already filled whole
                elif (lay, idx) in got or (stacked and layer in filled.get(path, ())):
                    where = f"layer {layer} " if stacked else ""
                    problems.append(f"{key}: {name} {where}part {idx} of axis {axis} filled twice")
                if path not in out:
                    out[path] = np.zeros(shape, odt) if materialize else None
                index = ((layer,) if stacked else ()) + (slice(None),) * axis + (idx,)
                if materialize:
                    out[path][index] = val.astype(odt)
                elif sink is not None:
                    sink(path, index, val.astype(odt, copy=False))
                got.add((lay, idx))
            elif stacked:
                val = _apply(rule.transform, a, leaf, key)
                if path not in out:
                    out[path] = np.zeros(shape, odt) if materialize else None
                if layer in filled.setdefault(path, set()) or any(q == layer for q, _ in parts.get(path, (0, ()))[1]):
                    problems.append(f"{key}: layer {layer} filled twice")
                if materialize:
                    out[path][layer] = val.astype(odt)
                elif sink is not None:
                    sink(path, (layer,), val.astype(odt, copy=False))
                filled[path].add(layer)
            else:
                if path in out:
                    problems.append(f"{key}: parameter {name} filled twice")
                val = _apply(rule.transform, a, leaf, key)
                out[path] = np.asarray(val).astype(odt) if materialize else None
                if sink is not None:
                    sink(path, (), np.asarray(val).astype(odt, copy=False))
        except ConversionError as e:
            problems.append(str(e))
        if on_tensor is not None:
            on_tensor(key)
    missing = []
    for path, (shape, _) in targets.items():
        name = ".".join(map(str, path))
        if path not in out:
            missing.append(name)
        elif path in parts:
            axis, got = parts[path]
            stacked = path in filled or any(q is not None for q, _ in got)
            n = (shape[1:] if stacked else shape)[axis]
            whole = filled.get(path, set())
            lost = {}
            for lay in range(shape[0]) if stacked else [None]:
                for j in range(n):
                    if (lay, j) not in got and lay not in whole:
                        lost.setdefault(j, []).append(lay)
            for j, lays in sorted(lost.items()):
                missing.append(f"{name} (part {j} of axis {axis}" + (f", layers {lays})" if stacked else ")"))
        elif path in filled and len(filled[path]) != shape[0]:
            lost = sorted(set(range(shape[0])) - filled[path])
            missing.append(f"{name} (layers {lost})")
    msgs = []
    if missing:
        msgs.append(
            f"missing tensor(s) for {len(missing)} parameter(s): {', '.join(missing[:20])}"
            + (" …" if len(missing) > 20 else "")
        )
    if unmatched:
        msgs.append(
            f"unexpected tensor(s) in {source}: {', '.join(unmatched[:20])}" + (" …" if len(unmatched) > 20 else "")
        )
    if problems:
        msgs.append("; ".join(problems[:20]) + (" …" if len(problems) > 20 else ""))
    if msgs:
        raise ConversionError(f"{source}: " + " | ".join(msgs))
    return out


def param_targets(abstract_module) -> dict[tuple, tuple[tuple[int, ...], np.dtype]]:
    """{path: (shape, dtype)} of the `nnx.Param`s of an abstract (eval_shape) module."""
    from flax import nnx

    pure = nnx.to_pure_dict(nnx.state(abstract_module, nnx.Param))
    return {p: (tuple(v.shape), np.dtype(v.dtype)) for p, v in flatten_params(pure).items()}


def load_params(
    source,
    targets: Mapping[tuple, tuple[tuple[int, ...], np.dtype]],
    rules: Iterable[Rule],
    ignored: Iterable[str] = (),
    *,
    dtype: np.dtype | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Convert a tensor source (`weight_files.open_weights(...)`: any published layout) onto `targets`,
    one tensor at a time (nested dict out)."""
    flat = convert_state_dict(
        source.keys(),
        source.get,
        targets,
        rules,
        ignored,
        dtype=np.dtype(dtype) if dtype else None,
        source=getattr(source, "path", "checkpoint"),
        on_tensor=progress,
    )
    return unflatten_params(flat)
