"""Random seeded Janus weights written in the OFFICIAL layout (`MultiModalityCausalLM.state_dict()`
key names and torch shapes), so that janusflow-jax, the official PyTorch modules and transformers'
port all time the same weights (`sample/bench.py --family janus --save DIR`).

No torch and no key list of its own: every official key is derived from the project's weight table
(`janusflow_jax.janus.weights.official_rules`) by inverting each rule (its JAX target template
gives the regex groups, which fill the torch pattern), and every tensor by the inverse of the
rule's layout transform. `write_official_folder` then reads the folder back with the project's
loader and checks every parameter bitwise, so an inversion error cannot pass silently.

Two groups the project does not keep (the official model builds and stores them, its forward never
reads them) are added so that the file loads strictly into the official model: the SigLIP
`attn_pool.*` head (timm `AttentionPoolLatent`, global_pool "map": shapes from the SigLIP width and
mlp_ratio; seeded random values) and the VQ's `quantize.codebook_used` buffer (65536 zeros).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

__all__ = ["FOLDER_FILES", "official_state_dict", "unused_official_tensors", "write_official_folder"]

# The files of an official-layout Janus folder besides model.safetensors (tokenizer and processor).
FOLDER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "preprocessor_config.json",
)


def _pattern_template(pattern: str):
    """A rule pattern → [literal str | group number], or None if it is not "literals + capture groups"."""
    out, i, group, lit = [], 0, 0, []
    meta = set(".^$*+?{}[]|")
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1]
            if nxt.isalnum():
                return None  # a class like \d outside a group: not a literal
            lit.append(nxt)
            i += 2
        elif c == "(":
            if pattern.startswith("(?", i):
                return None
            depth, j = 0, i
            while j < len(pattern):
                if pattern[j] == "\\":
                    j += 2
                    continue
                depth += {"(": 1, ")": -1}.get(pattern[j], 0)
                if depth == 0:
                    break
                j += 1
            # every '(' inside that is not '(?' is a nested capture group: count them
            inner = re.sub(r"\\.", "", pattern[i + 1 : j])
            group += 1
            if lit:
                out.append("".join(lit))
                lit = []
            out.append(group)
            group += len(re.findall(r"\((?!\?)", inner))
            i = j + 1
        elif c in meta:
            return None
        else:
            lit.append(c)
            i += 1
    if lit:
        out.append("".join(lit))
    return out


def _target_regex(target: str):
    """A rule target ("a.b.*.{1}.kernel") → (regex over the dotted JAX path, stacked?)."""
    parts, seen = [], set()
    stacked = False
    for seg in target.split("."):
        if seg == "*":
            stacked = True
            continue
        pieces = re.split(r"(\{\d+\})", seg)
        rx = ""
        for p in pieces:
            m = re.fullmatch(r"\{(\d+)\}", p)
            if m:
                n = int(m.group(1))
                rx += f"(?P=g{n})" if n in seen else f"(?P<g{n}>.+?)"
                seen.add(n)
            else:
                rx += re.escape(p)
        parts.append(rx)
    return re.compile(r"\.".join(parts)), stacked


def _to_torch(transform: str, a: np.ndarray) -> np.ndarray:
    """The inverse of `janusflow_jax.weights`' layout transforms (JAX leaf → torch tensor)."""
    if transform == "identity":
        return a
    if transform == "linear":
        return a.T
    if transform == "heads_in":  # [D, (X,) N, H] -> [X·N·H, D]
        return a.reshape(a.shape[0], -1).T
    if transform == "heads_bias":
        return a.reshape(-1)
    if transform == "heads_out":  # [N, H, D] -> [D, N·H]
        return a.reshape(-1, a.shape[-1]).T
    if transform == "conv":  # HWIO -> OIHW
        return a.transpose(3, 2, 0, 1)
    if transform == "conv1x1_linear":  # [I, O] -> [O, I, 1, 1]
        return a.T[:, :, None, None]
    if transform == "squeeze":  # pos_embed (N, W) -> (1, N, W), the only squeezed Janus tensor
        return a[None]
    raise ValueError(f"no inverse for transform {transform!r}")


def official_state_dict(cfg, params: dict) -> dict[str, np.ndarray]:
    """JAX parameters (nested dict of arrays) of a `JanusModel` → {official key: float32 torch-layout array}."""
    from janusflow_jax.janus.weights import official_rules
    from janusflow_jax.weights import flatten_params

    rules = official_rules(cfg)
    compiled = [(re.compile(r.pattern), r) for r in rules]
    inv = []
    for r in rules:
        tmpl = _pattern_template(r.pattern)
        if tmpl is None or r.part is not None:
            continue
        rx, stacked = _target_regex(r.target)
        inv.append((r, tmpl, rx, stacked))

    def forward(key):  # the first rule that matches, as the loader picks it
        for rx, r in compiled:
            if rx.fullmatch(key):
                return r
        return None

    out: dict[str, np.ndarray] = {}
    for path, leaf in flatten_params(params).items():
        name = ".".join(map(str, path))
        leaf = np.asarray(leaf, np.float32)
        done = False
        for r, tmpl, rx, stacked in inv:
            m = rx.fullmatch(name)
            if not m:
                continue
            groups = {int(k[1:]): v for k, v in m.groupdict().items()}
            layers = range(leaf.shape[0]) if stacked else [None]
            keys = []
            for layer in layers:
                g = dict(groups)
                if stacked:
                    g[1] = str(layer)
                if any(isinstance(t, int) and t not in g for t in tmpl):
                    break
                key = "".join(t if isinstance(t, str) else g[t] for t in tmpl)
                if forward(key) is not r:
                    break
                keys.append((key, layer))
            else:
                for key, layer in keys:
                    out[key] = np.ascontiguousarray(_to_torch(r.transform, leaf if layer is None else leaf[layer]))
                done = True
                break
        if not done:
            raise ValueError(f"no official key found for parameter {name}")
    return out


def unused_official_tensors(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """The stored-but-never-read official tensors: SigLIP `attn_pool.*` and `codebook_used`."""
    w, m = cfg.siglip.width, cfg.siglip.mlp_dim
    rng = np.random.default_rng(seed)
    p = "vision_model.vision_tower.attn_pool."
    shapes = {
        "latent": (1, 1, w), "q.weight": (w, w), "q.bias": (w,), "kv.weight": (2 * w, w), "kv.bias": (2 * w,),
        "proj.weight": (w, w), "proj.bias": (w,), "norm.weight": (w,), "norm.bias": (w,),
        "mlp.fc1.weight": (m, w), "mlp.fc1.bias": (m,), "mlp.fc2.weight": (w, m), "mlp.fc2.bias": (w,),
    }  # fmt: skip
    out = {p + k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in shapes.items()}
    out["gen_vision_model.quantize.codebook_used"] = np.zeros((65536,), np.float32)
    return out


def write_official_folder(model, out_dir: str, config_dir: str) -> int:
    """Write `model`'s parameters as `out_dir/model.safetensors` (official keys) next to the files of
    `config_dir` (config.json, tokenizer, processor), then load the folder back with the project's
    loader and check every parameter bitwise. Returns the number of tensors written."""
    import jax
    from flax import nnx

    from janusflow_jax.janus.model import read_folder
    from janusflow_jax.safetensors_io import save_safetensors
    from janusflow_jax.weights import flatten_params

    params = jax.tree.map(np.asarray, nnx.to_pure_dict(model.params))
    sd = official_state_dict(model.cfg, params)
    sd.update(unused_official_tensors(model.cfg))
    os.makedirs(out_dir, exist_ok=True)
    save_safetensors(os.path.join(out_dir, "model.safetensors"), sd, {"format": "pt"})
    for f in FOLDER_FILES:
        if os.path.exists(os.path.join(config_dir, f)):
            shutil.copy(os.path.join(config_dir, f), out_dir)
    _, back = read_folder(out_dir, dtype="float32")
    want, got = flatten_params(params), flatten_params(back)
    bad = [".".join(map(str, p)) for p in want if p not in got or not np.array_equal(np.asarray(got[p]), want[p])]
    if bad or set(got) != set(want):
        raise AssertionError(
            f"round trip through {out_dir} differs: {bad[:5]} (+{len(bad) - 5 if len(bad) > 5 else 0})"
        )
    with open(os.path.join(out_dir, "bench_weights.json"), "w") as f:
        json.dump(
            {"tensors": len(sd), "values": int(sum(a.size for a in sd.values())), "source": "janusflow_jax init"}, f
        )
    return len(sd)
