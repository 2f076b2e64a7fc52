"""Sampling benchmark: one text-to-image call (ODE + VAE decode) and one understanding decode.

    python sample/bench.py [--size bench] [--repeats 5] [--dtype float32] [--weights DIR]
    python sample/bench.py --family janus [--save DIR | --weights DIR] [--json PATH]   # see sample/bench_janus.py

Prints compile time, the median of `--repeats` timed runs (after a warm-up), images/s, tokens/s,
the analytic FLOPs of each call, the matrix-multiply peak measured in this run, MFU, and the time
bound FLOPs ÷ peak. `bench` is the geometry of shared/reference/bench (sample/configs/bench/),
whose official PyTorch CPU timings are printed beside ours. The weights are random unless
`--weights` names an official-format folder (`config.json` + `model.safetensors` + `vae/`), such as
the one `sample/bench_official.py --save` writes, so both pipelines can be timed on the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(fn, repeats: int):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    fn()  # warm-up (not timed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return first, statistics.median(times), times


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family", default="janusflow", choices=["janusflow", "janus"])
    family = pre.parse_known_args(argv)[0].family
    if family == "janus":  # Janus / Janus-Pro (VQ image tokens): its own benchmark
        sys.path.insert(0, HERE)
        from bench_janus import main as janus_main

        return janus_main(argv)

    from janusflow_jax import flops, host_memory
    from janusflow_jax.config import VaeConfig, load_official_config
    from janusflow_jax.model import JanusFlowModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="janusflow", choices=["janusflow", "janus"], help="janus: sample/bench_janus.py")
    ap.add_argument("--size", default="bench", choices=["bench"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--what", default="gen,und")
    ap.add_argument("--weights", default=None, help="official-format folder with the bench weights")
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc malloc as it is (by default the benchmark, a long-running process, keeps "
        "XLA's scratch memory mapped between calls: janusflow_jax/host_memory.py)",
    )
    args = ap.parse_args(argv)
    if not args.default_malloc:
        host_memory.keep_host_memory()

    folder = os.path.join(HERE, "configs", args.size)
    settings = json.load(open(os.path.join(folder, "bench_settings.json")))
    torch_ref = json.load(open(os.path.join(folder, "torch_cpu_results.json")))
    cfg = load_official_config(folder).with_dtype(args.dtype)
    vae_cfg = VaeConfig.from_diffusers(json.load(open(os.path.join(folder, "vae_config.json"))))
    import dataclasses

    vae_cfg = dataclasses.replace(vae_cfg, dtype=args.dtype, param_dtype=args.dtype)
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({jax.default_backend()}), {len(jax.devices())} device(s), dtype {args.dtype}")
    print(f"host memory reuse (janusflow_jax.host_memory): {host_memory.reason}")
    t = time.perf_counter()
    special = dict(pad_id=258, eos_id=-1)  # the bench's byte-level tokenizer; no EOS: always 32 tokens
    if args.weights:
        from janusflow_jax.model import read_hf_folder

        cfg, vae_cfg, jf, vae = read_hf_folder(args.weights, os.path.join(args.weights, "vae"), dtype=args.dtype)
        model = JanusFlowModel.from_host_params(cfg, vae_cfg, jf, vae, **special)
        print(f"weights from {args.weights}: {time.perf_counter() - t:.1f}s")
    else:
        model = JanusFlowModel.init(cfg, vae_cfg, seed=0, **special)
        print(f"init (random weights): {time.perf_counter() - t:.1f}s")
    peak = flops.matmul_peak(args.dtype)
    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s")
    out = {"device": dev.device_kind, "peak_flops": peak}

    if "gen" in args.what:
        steps, b, w = settings["num_steps"], settings["gen_batch"], settings["cfg_weight"]
        c, h, wd = settings["latent"]
        text = f"User: {settings['gen_prompt']}\n\nAssistant:".encode()
        ids = np.asarray([256] + list(text) + [260], np.int32)  # BOS, bytes, image tag (byte-level tokenizer)
        z0 = np.asarray(jax.random.normal(jax.random.key(1), (b, h, wd, c)), np.float32)

        def gen():
            z = model.sample_latents(ids, z0, num_steps=steps, cfg_weight=w)
            return model.vae_decode(z)

        first, med, all_t = timed(gen, args.repeats)
        plen = len(ids) - 1
        f_gen = flops.llm_flops(cfg.llm, 2 * b, plen) + steps * flops.gen_step_flops(
            cfg, 2 * b, h, plen, recompute=False
        )
        f_vae = flops.vae_decode_flops(vae_cfg, h, b)
        f_official = steps * flops.gen_step_flops(cfg, 2 * b, h, plen, recompute=True) + f_vae
        total = f_gen + f_vae
        ref = torch_ref["generation"]["sampling_call_s"]["median_s"]
        print(
            f"generation ({steps} steps, CFG batch {b}, {h}x{wd} latents, prompt {len(ids)} tokens): "
            f"first call {first:.2f}s (compile+run), median {med:.3f}s over {args.repeats} "
            f"({b / med:.2f} images/s); FLOPs {total / 1e9:.1f} G (official full-recompute path {f_official / 1e9:.1f} G); "
            f"MFU {flops.mfu(total, med, peak):.1%}; bound {total / peak:.3f}s; stored official torch figure {ref:.2f}s (its own CPU; sample/bench_official.py times it here) → {ref / med:.2f}x"
        )
        out["generation"] = dict(
            first_s=first, median_s=med, all_s=all_t, flops=total, official_flops=f_official, torch_s=ref
        )

    if "und" in args.what:
        n_new = settings["und_new_tokens"]
        p_tokens = torch_ref["understanding"]["prompt_tokens"]
        n_img = cfg.siglip.num_patches
        ids = np.array(jax.random.randint(jax.random.key(2), (1, p_tokens), 0, 256), np.int32)
        ids[0, 0] = 256
        start = 40
        seq_mask = np.zeros((1, p_tokens), bool)
        seq_mask[0, start : start + 1 + n_img] = True
        emb_mask = np.ones((1, 1, 1 + n_img), bool)
        px = np.asarray(
            jax.random.normal(jax.random.key(3), (1, 1, cfg.siglip.image_size, cfg.siglip.image_size, 3)), np.float32
        )

        def und():
            return model.generate_text(ids, px, seq_mask, emb_mask, max_new_tokens=n_new)

        first, med, all_t = timed(und, args.repeats)
        f_und = flops.siglip_flops(cfg.siglip, 1) + flops.llm_flops(cfg.llm, 1, p_tokens, lm_head_tokens=1)
        f_und += sum(flops.llm_flops(cfg.llm, 1, 1, cached=p_tokens + k, lm_head_tokens=1) for k in range(n_new - 1))
        ref = torch_ref["understanding"]["generate_32_tokens_s"]["median_s"]
        print(
            f"understanding ({p_tokens}-token prompt, {n_new} new tokens): first call {first:.2f}s, median {med:.3f}s "
            f"({n_new / med:.1f} tokens/s); FLOPs {f_und / 1e9:.2f} G; MFU {flops.mfu(f_und, med, peak):.1%}; "
            f"bound {f_und / peak:.3f}s; stored official torch figure {ref:.3f}s (its own CPU) → {ref / med:.2f}x"
        )
        out["understanding"] = dict(first_s=first, median_s=med, all_s=all_t, flops=f_und, torch_s=ref)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
