"""Time the OFFICIAL Janus procedure and transformers' Janus port at the `bench-janus` geometry, on the
weights of `sample/bench.py --family janus --save DIR`, to run beside `sample/bench.py --family janus`.

Not part of the package or the tests. Two sides, each in the environment it needs:

  --side official       the official `MultiModalityCausalLM` from a user's checkout of
                        github.com/deepseek-ai/Janus (`--janus-src`). Its `janus.models` does not import
                        under transformers 5 (its configs are not dataclass-compatible), so it runs in a
                        venv with transformers 4.47.1 (the version of the stored references):
      python -m venv --system-site-packages /tmp/offenv
      /tmp/offenv/bin/pip install transformers==4.47.1 "tokenizers>=0.21,<0.22" "huggingface-hub<1" timm==1.0.31 --no-deps
      /tmp/offenv/bin/python sample/bench_janus_official.py --side official --janus-src ~/Janus --weights /tmp/janusw
  --side transformers   transformers' `JanusForConditionalGeneration` (transformers >= 4.52; the project's
                        environment has 5.24), built from the same config.json, the same tensors renamed
                        to its layout in memory and loaded with strict=True:
      python sample/bench_janus_official.py --side transformers --weights /tmp/janusw

The official procedure is `generate()` of the checkout's `generation_inference.py`, taken with `ast` and
executed unchanged (the module itself loads a hub model at import, so it cannot be imported), with
injected globals: the real `torch` and `numpy`, the official `MultiModalityCausalLM`/`VLChatProcessor`,
a `PIL` whose `Image.fromarray(...).save()` keeps the uint8 images in memory and an `os` whose `makedirs`
does nothing (no files written); `Tensor.cuda` is made a no-op in this process (CPU). It is called once
per prompt with `parallel_size` = images per prompt (the function takes one prompt), CFG 5,
temperature 1, 576 tokens, 384 px — exactly as a user of the official repository generates two
prompts. The processor is the official `VLChatProcessor.from_pretrained(weights folder)`; the prompt
text is its `apply_sft_template_for_multi_turn_prompts` (roles `<|User|>`/`<|Assistant|>`, no system
prompt) + `image_start_tag`, as app_januspro.py builds it.

transformers: one `generate(inputs, attention_mask, generation_mode="image", do_sample=True,
top_k=None, guidance_scale=5, temperature=1, num_return_sequences=2)` for both prompts (left-padded,
the same ids), then `decode_image_tokens`.

Phases, per run of both prompts (after one warm-up run): the token loop (generate start → decode
start; official: summed over its two calls), the prefill (the first LLM call of each generate, timed
by forward hooks), a step = (loop − prefill) / 575 (official: per call, 4 CFG rows; transformers:
8 rows), the VQ decode per image, and end to end per image. 2 torch threads by default. Each run
also records the CPU time this process got per wall second and the load average (shared machines).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_janus import DEFAULT_CONFIG, Load, cpu_info, cpu_line, load_settings


def _attrdict_stand_in():
    """PyPI's `attrdict` fails on Python >= 3.10 (collections.Mapping); the official configs only need
    a dict whose keys read as attributes."""

    class AttrDict(dict):
        def __getattr__(self, k):
            try:
                return self[k]
            except KeyError:
                raise AttributeError(k) from None

        def __setattr__(self, k, v):
            self[k] = v

    m = types.ModuleType("attrdict")
    m.AttrDict = AttrDict
    sys.modules["attrdict"] = m


def _tokens(tokenizer_json: str) -> dict:
    with open(tokenizer_json, encoding="utf-8") as f:
        tok = json.load(f)
    return {a["content"]: int(a["id"]) for a in tok.get("added_tokens", [])}


class _Hooks:
    """Wall time of every forward of a module (pre/post hooks)."""

    def __init__(self, module):
        self.calls: list[float] = []
        self._t: list[float] = []
        module.register_forward_pre_hook(lambda m, a: self._t.append(time.perf_counter()))
        module.register_forward_hook(lambda m, a, o: self.calls.append(time.perf_counter() - self._t.pop()))


def _median(xs):
    return float(statistics.median(xs))


def _summary(side, runs, n_img, steps, extra) -> dict:
    """Per-run dicts {loop_s, prefill_s, decode_s, e2e_s, step_ms, cores} → the JSON of one side."""

    def col(k):
        return [r[k] for r in runs]

    return {
        "side": side,
        "cpu": cpu_info(),
        **extra,
        "loop": dict(median_s=_median(col("loop_s")), runs_s=col("loop_s"), prefill_s=_median(col("prefill_s")),
                     prefill_runs_s=col("prefill_s"), step_ms=_median(col("step_ms")), step_runs_ms=col("step_ms"),
                     per_image_s=_median(col("loop_s")) / n_img, steps=steps, cores=col("cores"), others=col("others")),
        "vq": dict(median_s=_median(col("decode_s")), runs_s=col("decode_s"), per_image_s=_median(col("decode_s")) / n_img,
                   images=n_img, others=col("others")),
        "e2e": dict(median_s=_median(col("e2e_s")), runs_s=col("e2e_s"), per_image_s=_median(col("e2e_s")) / n_img,
                    images=n_img, others=col("others")),
    }  # fmt: skip


# --- the official procedure -----------------------------------------------------------------------


def official_side(args, settings, raw) -> dict:
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        from bench_official import _stand_in_torchvision

        _stand_in_torchvision()
    try:
        import attrdict  # noqa: F401
    except Exception:
        _attrdict_stand_in()
    sys.path.insert(0, os.path.abspath(args.janus_src))
    import torch
    from janus.models import MultiModalityCausalLM, VLChatProcessor, siglip_vit
    from janus.models.modeling_vlm import MultiModalityConfig
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    vp = raw["vision_config"]["params"]
    if "siglip_vit_cfg" in vp:  # the official SigLIP table has no entry for the bench width
        siglip_vit.SigLIP_MODEL_CONFIG[vp["model_name"]] = vp["siglip_vit_cfg"]
    t = time.perf_counter()
    torch.manual_seed(0)
    model = MultiModalityCausalLM(MultiModalityConfig(**raw))
    model.load_state_dict(load_file(os.path.join(args.weights, "model.safetensors")), strict=True)
    model = model.float().eval()
    proc = VLChatProcessor.from_pretrained(args.weights)
    print(f"official model from {args.weights} (strict load): {time.perf_counter() - t:.1f}s", flush=True)

    # generation_inference.py's generate(), unchanged, with injected globals
    path = os.path.join(args.janus_src, "generation_inference.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate"]
    if len(fn) != 1:
        raise SystemExit(f"{path}: no single top-level generate()")
    images = []

    class _Image:
        def __init__(self, a):
            self.a = np.array(a)

        def save(self, _path):
            images.append(self.a)

    g = {
        "__name__": "generation_inference",
        "torch": torch,
        "np": np,
        "os": types.SimpleNamespace(makedirs=lambda *a, **k: None, path=os.path),
        "PIL": types.SimpleNamespace(Image=types.SimpleNamespace(fromarray=_Image)),
        "MultiModalityCausalLM": MultiModalityCausalLM,
        "VLChatProcessor": VLChatProcessor,
    }
    exec(compile(ast.Module(body=fn, type_ignores=[]), path, "exec"), g)
    generate = g["generate"]
    torch.Tensor.cuda = lambda self, *a, **k: self  # CPU: the official code calls .cuda() on its buffers

    llm = _Hooks(model.language_model.model)
    dec_t: list[tuple[float, float]] = []
    orig_decode = model.gen_vision_model.decode_code

    def decode_code(*a, **k):
        t0 = time.perf_counter()
        out = orig_decode(*a, **k)
        dec_t.append((t0, time.perf_counter() - t0))
        return out

    model.gen_vision_model.decode_code = decode_code

    per = int(settings["images_per_prompt"])
    n_tok = int(settings["image_tokens"])
    side = int(settings["image_size"])
    prompts = []
    for p in settings["prompts"]:
        conv = [{"role": "<|User|>", "content": p}, {"role": "<|Assistant|>", "content": ""}]
        s = proc.apply_sft_template_for_multi_turn_prompts(
            conversations=conv, sft_format=proc.sft_format, system_prompt=""
        )
        prompts.append(s + proc.image_start_tag)
    ids = [proc.tokenizer.encode(p) for p in prompts]

    def one_run():
        images.clear()
        r = dict(loop_s=0.0, prefill_s=0.0, decode_s=0.0, e2e_s=0.0, step_s=0.0)
        ld = Load().__enter__()
        for p in prompts:
            llm.calls.clear()
            dec_t.clear()
            t0 = time.perf_counter()
            generate(model, proc, p, temperature=float(settings["temperature"]), parallel_size=per,
                     cfg_weight=float(settings["cfg_weight"]), image_token_num_per_image=n_tok, img_size=side,
                     patch_size=side // int(round(n_tok**0.5)))  # fmt: skip
            t1 = time.perf_counter()
            ((d0, d),) = dec_t
            r["loop_s"] += d0 - t0
            r["prefill_s"] += llm.calls[0]
            r["step_s"] += (d0 - t0 - llm.calls[0]) / (n_tok - 1)
            r["decode_s"] += d
            r["e2e_s"] += t1 - t0
        ld.__exit__(None, None, None)
        r["cores"], r["others"] = ld.cores, ld.others
        r["step_ms"] = r.pop("step_s") / len(prompts) * 1e3  # one call's step (2·parallel_size rows)
        return r

    out_runs = []
    t = time.perf_counter()
    one_run()  # warm-up
    print(f"warm-up run: {time.perf_counter() - t:.1f}s", flush=True)
    load0 = os.getloadavg()[0]
    for i in range(args.repeats):
        r = one_run()
        out_runs.append(r)
        print(f"run {i}: loop {r['loop_s']:.2f}s (prefill {r['prefill_s'] * 1e3:.0f} ms, step {r['step_ms']:.2f} ms), "
              f"decode {r['decode_s']:.2f}s, total {r['e2e_s']:.2f}s, CPU {r['cores']:.2f} cores, others {r['others'] or 0:.2f}", flush=True)  # fmt: skip
    img = np.stack(images)
    extra = dict(
        torch=torch.__version__, capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads(),
        procedure="generation_inference.py generate() (ast, unchanged), one call per prompt",
        geometry=dict(prompts=len(prompts), images_per_prompt=per, cfg_rows_per_call=2 * per, tokens=n_tok,
                      prompt_lens=[len(x) for x in ids], image_size=side),
        prompt_ids=ids, images=list(img.shape), mean_pixel=float(img.mean()),
        load_avg_start=load0, load_avg_end=os.getloadavg()[0],
    )  # fmt: skip
    import transformers

    extra["transformers"] = transformers.__version__
    return _summary("official", out_runs, len(prompts) * per, n_tok - 1, extra)


# --- transformers' port ---------------------------------------------------------------------------


def hf_state_dict(sd: dict) -> dict:
    """Official `MultiModalityCausalLM` keys → transformers' `JanusForConditionalGeneration` keys (the
    renames of transformers' convert_janus_weights_to_hf.py; fused SigLIP qkv split in thirds,
    pos_embed squeezed, the never-read attn_pool and codebook_used dropped)."""
    import re

    out = {}
    for k, v in sd.items():
        if ".attn_pool." in k or k.endswith("quantize.codebook_used"):
            continue
        if k.startswith("language_model.model."):
            out["model.language_model." + k[len("language_model.model.") :]] = v
        elif k == "language_model.lm_head.weight":
            out["lm_head.weight"] = v
        elif k.startswith("vision_model.vision_tower."):
            r = k[len("vision_model.vision_tower.") :]
            p = "model.vision_model."
            m = re.fullmatch(r"blocks\.(\d+)\.(.*)", r)
            if m:
                i, rest = m.groups()
                q = f"{p}encoder.layers.{i}."
                if rest.startswith("attn.qkv."):
                    kind = rest.split(".")[-1]
                    for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                        out[f"{q}self_attn.{name}.{kind}"] = part.contiguous()
                    continue
                rest = rest.replace("attn.proj.", "self_attn.projection_layer.")
                rest = rest.replace("norm1.", "layer_norm1.").replace("norm2.", "layer_norm2.")
                out[q + rest] = v
            elif r == "pos_embed":
                out[p + "embeddings.position_embedding.weight"] = v.reshape(v.shape[-2], v.shape[-1])
            elif r.startswith("patch_embed.proj."):
                out[p + "embeddings.patch_embedding." + r.split(".")[-1]] = v
            elif r.startswith("norm."):
                out[p + "post_layernorm." + r.split(".")[-1]] = v
            else:
                raise KeyError(k)
        elif k.startswith("gen_vision_model."):
            r = k[len("gen_vision_model.") :]
            r = r.replace("encoder.conv_blocks.", "encoder.down.").replace("decoder.conv_blocks.", "decoder.up.")
            r = r.replace(".res.", ".block.")
            r = re.sub(r"\.mid\.0\.", ".mid.block_1.", r)
            r = re.sub(r"\.mid\.1\.", ".mid.attn_1.", r)
            r = re.sub(r"\.mid\.2\.", ".mid.block_2.", r)
            out["model.vqmodel." + r] = v
        elif k.startswith(("aligner.layers.", "gen_aligner.layers.")):
            head, _, idx, kind = k.split(".")
            name = "model.aligner." if head == "aligner" else "model.generation_aligner."
            out[name + ("fc1." if idx == "0" else f"hidden_layers.{int(idx) // 2 - 1}.") + kind] = v
        elif k.startswith("gen_head.output_mlp_projector."):
            out["model.generation_head.proj_out." + k.split(".")[-1]] = v
        elif k.startswith("gen_head.vision_head."):
            out["model.generation_head.vision_head." + k.split(".")[-1]] = v
        elif k == "gen_embed.weight":
            out["model.generation_embeddings.weight"] = v
        else:
            raise KeyError(k)
    return out


def build_hf_model(weights: str, raw: dict):
    """transformers' `JanusForConditionalGeneration` for an official config.json (with the
    `siglip_vit_cfg` / `vq_model_args` additions), the folder's tensors renamed and loaded with
    strict=True; its generation config gets the folder's pad/BOS/`<begin_of_image>` ids."""
    import torch
    from safetensors.torch import load_file
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    lc = raw["language_config"]
    if raw["gen_head_config"]["params"]["image_token_embed"] != lc["hidden_size"]:
        raise ValueError("transformers' Janus port needs gen_head image_token_embed == the LLM hidden size")
    text = LlamaConfig(**{k: v for k, v in lc.items() if k not in ("model_type", "torch_dtype")})
    vp = raw["vision_config"]["params"]
    sc = vp["siglip_vit_cfg"]
    sel = int(vp.get("select_layer", -1))
    depth = min(sc["layers"], sc["layers"] + sel + 1) if sel <= 0 else min(sc["layers"], sel)
    d = lc["hidden_size"]
    vision = JanusVisionConfig(hidden_size=sc["width"], num_hidden_layers=depth, num_attention_heads=sc["heads"],
                               image_size=sc["image_size"], patch_size=sc["patch_size"], mlp_ratio=float(sc["mlp_ratio"]),
                               projection_dim=d, depth=raw["aligner_config"]["params"]["depth"],
                               num_image_tokens=(sc["image_size"] // sc["patch_size"]) ** 2)  # fmt: skip
    va = raw["gen_vision_config"]["params"].get("vq_model_args", {})
    vq = JanusVQVAEConfig(embed_dim=va.get("codebook_embed_dim", 8), num_embeddings=va.get("codebook_size", 16384),
                          latent_channels=va.get("z_channels", 256), base_channels=va.get("ch", 128),
                          channel_multiplier=list(va.get("decoder_ch_mult", [1, 1, 2, 2, 4])),
                          num_res_blocks=va.get("num_res_blocks", 2), projection_dim=d,
                          image_token_embed_dim=raw["gen_head_config"]["params"]["image_token_embed"],
                          num_hidden_layers=raw["gen_aligner_config"]["params"]["depth"])  # fmt: skip
    tok_ids = _tokens(os.path.join(weights, "tokenizer.json"))
    cfg = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                      image_token_id=tok_ids["<image_placeholder>"], tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(cfg)
    model.load_state_dict(hf_state_dict(load_file(os.path.join(weights, "model.safetensors"))), strict=True)
    model = model.float().eval()
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id = tok_ids["<｜▁pad▁｜>"], tok_ids["<｜begin▁of▁sentence｜>"]
    gc.generation_kwargs = {"boi_token_id": tok_ids["<begin_of_image>"]}
    return model


def transformers_side(args, settings, raw) -> dict:
    import torch
    import transformers
    from tokenizers import Tokenizer

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    model = build_hf_model(args.weights, raw)
    pad = model.generation_config.pad_token_id
    print(f"transformers {transformers.__version__} JanusForConditionalGeneration from {args.weights} "
          f"(strict load): {time.perf_counter() - t:.1f}s", flush=True)  # fmt: skip

    tok = Tokenizer.from_file(os.path.join(args.weights, "tokenizer.json"))
    texts = [
        f"<|User|>: {p}\n\n<|Assistant|>:<begin_of_image>" for p in settings["prompts"]
    ]  # as the official processor
    ids = [tok.encode(s).ids for s in texts]
    length = max(map(len, ids))
    inp = torch.full((len(ids), length), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, r in enumerate(ids):
        inp[i, length - len(r) :] = torch.tensor(r)
        mask[i, length - len(r) :] = 1
    per = int(settings["images_per_prompt"])
    n_tok = int(settings["image_tokens"])
    llm = _Hooks(model.model.language_model)

    @torch.inference_mode()
    def one_run():
        llm.calls.clear()
        ld = Load().__enter__()
        t0 = time.perf_counter()
        codes = model.generate(inputs=inp, attention_mask=mask, generation_mode="image", do_sample=True, top_k=None,
                               guidance_scale=float(settings["cfg_weight"]), temperature=float(settings["temperature"]),
                               num_return_sequences=per)  # fmt: skip
        t1 = time.perf_counter()
        img = model.decode_image_tokens(codes)
        t2 = time.perf_counter()
        ld.__exit__(None, None, None)
        loop = t1 - t0
        return dict(loop_s=loop, prefill_s=llm.calls[0], step_ms=(loop - llm.calls[0]) / (n_tok - 1) * 1e3,
                    decode_s=t2 - t1, e2e_s=t2 - t0, cores=ld.cores, others=ld.others,
                    shape=list(img.shape), codes=tuple(codes.shape), mean=float(img.float().mean()))  # fmt: skip

    t = time.perf_counter()
    one_run()  # warm-up
    print(f"warm-up run: {time.perf_counter() - t:.1f}s", flush=True)
    load0 = os.getloadavg()[0]
    runs = []
    for i in range(args.repeats):
        r = one_run()
        runs.append(r)
        print(f"run {i}: loop {r['loop_s']:.2f}s (prefill {r['prefill_s'] * 1e3:.0f} ms, step {r['step_ms']:.2f} ms), "
              f"decode {r['decode_s']:.2f}s, total {r['e2e_s']:.2f}s, CPU {r['cores']:.2f} cores; codes {r['codes']}", flush=True)  # fmt: skip
    extra = dict(
        torch=torch.__version__, capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads(),
        transformers=transformers.__version__, attn_implementation=model.config.text_config._attn_implementation,
        procedure="JanusForConditionalGeneration.generate(generation_mode='image', do_sample=True, top_k=None, "
                  "guidance_scale=5, num_return_sequences=2) on both prompts, then decode_image_tokens",
        geometry=dict(prompts=len(ids), images_per_prompt=per, cfg_rows=2 * len(ids) * per, tokens=n_tok,
                      prompt_lens=[len(x) for x in ids], image_size=runs[-1]["shape"][1]),
        prompt_ids=ids, images=runs[-1]["shape"], mean_pixel=runs[-1]["mean"],
        load_avg_start=load0, load_avg_end=os.getloadavg()[0],
    )  # fmt: skip
    return _summary("transformers", runs, len(ids) * per, n_tok - 1, extra)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", required=True, choices=["official", "transformers"])
    ap.add_argument(
        "--weights", required=True, help="official-layout folder from sample/bench.py --family janus --save"
    )
    ap.add_argument("--janus-src", default=None, help="checkout of github.com/deepseek-ai/Janus (--side official)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="folder with bench_settings.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.side == "official" and not args.janus_src:
        ap.error("--side official needs --janus-src")
    settings = load_settings(args.config)
    raw = json.load(open(os.path.join(args.weights, "config.json")))
    print(f"CPU: {cpu_line(cpu_info())}; load average {os.getloadavg()[0]:.2f}", flush=True)
    out = official_side(args, settings, raw) if args.side == "official" else transformers_side(args, settings, raw)
    lp, v, e = out["loop"], out["vq"], out["e2e"]
    print(f"\n{out['side']} (torch {out['torch']}, {out['threads']} threads, {out['capability']}): token loop "
          f"{lp['median_s']:.2f}s = {lp['per_image_s']:.2f} s per image (prefill {lp['prefill_s'] * 1e3:.0f} ms, "
          f"step {lp['step_ms']:.2f} ms); VQ decode {v['per_image_s']:.2f} s per image; end to end "
          f"{e['per_image_s']:.2f} s per image (medians of {args.repeats})")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
