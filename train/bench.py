"""Training benchmark: step time, tokens/s and MFU of the jitted train step (the one `janusflow-train`
runs, from `training.build`) at a benchmark geometry, for the janusflow or the janus task.

    python train/bench.py [--task janusflow|janus] [--devices 1|8] [--stage 2] [--dtype float32] [--repeats 5]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python train/bench.py --devices 8

Geometries (random weights, synthetic batch of random pixels and ids, `--gen/--und/--text` rows per device):
  janusflow  sample/configs/bench (shared/reference/bench): LLM 512 wide × 4 layers, SigLIP 256 wide at
             384 px, 48×48 latents = 576 image tokens; generation rows run the VAE encoder, rectified
             flow and REPA
  janus      sample/configs/bench-janus: the same LLM and SigLIP, the real-size VQ-16 tokenizer at 384 px
             (576 codes, 16384-way image head); generation rows run the frozen VQ encoder and the
             next-code cross-entropy
Understanding rows are the sampling benchmark's 816-token prompt with its answer, text rows 256 tokens.
MFU = model FLOPs (3× the forward of what the loss flows through, + frozen feature extractors the loss
reads: SigLIP for REPA; not the VAE/VQ encoders) ÷ time ÷ (matmul peak measured in this run ×
devices). On simulated CPU devices (one host) the peak is the host's, so MFU is against one peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def synthetic_batch(task, d, n: int, args, rng):
    """Random rows in the loader's layout: `--gen/--und/--text` per device × n devices."""
    import numpy as np

    rows = {k: getattr(args, k) * n for k in ("gen", "und", "text") if getattr(args, k)}
    shapes = task.abstract_batch(d, rows)
    batch = {}
    if "gen" in shapes:
        g = shapes["gen"]
        batch["gen"] = {"prompt_ids": rng.integers(1, 200, g["prompt_ids"].shape).astype(np.int32),
                        "prompt_mask": np.ones(g["prompt_mask"].shape, np.int32),
                        "image": rng.integers(0, 256, g["image"].shape).astype(np.uint8)}  # fmt: skip
    if "und" in shapes:
        u = shapes["und"]
        b, lu = u["ids"].shape
        slots = task.objective().und_slots if task.name == "janus" else task.model_cfg.siglip.num_patches + 1
        seq = np.zeros((b, lu), bool)
        seq[:, 40 : 40 + slots] = True
        lm = np.zeros((b, lu), np.float32)
        lm[:, 816:] = 1
        batch["und"] = {"ids": rng.integers(1, 200, (b, lu)).astype(np.int32), "mask": np.ones((b, lu), np.int32),
                        "loss_mask": lm, "pixel_values": rng.normal(size=u["pixel_values"].shape).astype(np.float32),
                        "images_seq_mask": seq}  # fmt: skip
    if "text" in shapes:
        t = shapes["text"]["ids"].shape
        batch["text"] = {"ids": rng.integers(1, 200, t).astype(np.int32), "mask": np.ones(t, np.int32),
                         "loss_mask": np.ones(t, np.float32)}  # fmt: skip
    return batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="janusflow", choices=("janusflow", "janus"))
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--stage", default="2")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    p.add_argument("--gen", type=int, default=2, help="generation rows per device")
    p.add_argument("--und", type=int, default=1, help="understanding rows per device")
    p.add_argument("--text", type=int, default=1, help="text rows per device")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import janusflow_jax  # noqa: F401  (first: it picks the CPU platform on machines without an accelerator)

    import jax
    import numpy as np

    from janusflow_jax import flops
    from janusflow_jax.sharding import make_mesh
    from janusflow_jax.training.build import build
    from janusflow_jax.training.config import load_config

    if len(jax.devices()) < args.devices:
        raise SystemExit(f"{args.devices} devices asked, {len(jax.devices())} present (set XLA_FLAGS on CPU)")
    n = args.devices
    configs = os.path.join(os.path.dirname(HERE), "sample", "configs")
    ov = [f"task={args.task}", f"stage={args.stage}", f"model.dtype={args.dtype}", f"model.remat={args.remat}",
          "optim.lr=1e-4", "data.gen_prompt_len=32", "data.und_len=848", "data.text_len=256"]  # fmt: skip
    for k in ("gen", "und", "text"):
        ov += [f"data.mix.{k}={getattr(args, k) * n}"] + ([f"data.{k}.kind=shapes"] if getattr(args, k) else [])
    if args.task == "janusflow":
        ov += [f"model.config={configs}/bench/config.json", f"model.vae_config={configs}/bench/vae_config.json",
               "loss.repa.layer=2", "loss.repa.hidden=512"]  # fmt: skip
    else:
        ov += [f"model.config={configs}/bench-janus/config.json"]
    cfg = load_config(None, ov)
    mesh = make_mesh({"data": n}, jax.devices()[:n])
    built = build(cfg, mesh, weights=False)
    state = built.init_state()
    batch_np = synthetic_batch(built.task, cfg.data, n, args, np.random.default_rng(0))
    step = built.jit(batch_np)
    batch = built.global_batch(batch_np)

    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    peak = flops.matmul_peak(args.dtype)
    total = built.flops_per_step()
    tokens = built.tokens_per_step()
    simulated = jax.devices()[0].platform == "cpu"
    denom_devices = 1 if simulated else n
    n_img = built.task.num_gen_tokens
    print(f"device: {jax.devices()[0].device_kind} × {n}{' (simulated on one host)' if simulated and n > 1 else ''}; "
          f"task {args.task} stage {args.stage}, {args.dtype}, remat {args.remat}")  # fmt: skip
    print(f"batch: {args.gen * n} gen ({cfg.data.gen_prompt_len}+{n_img} tokens, {built.task.gen_image_size}px), "
          f"{args.und * n} und ({cfg.data.und_len} tokens), {args.text * n} text ({cfg.data.text_len} tokens); "
          f"loss {float(m['loss']):.4f}")  # fmt: skip
    print(f"compile {compile_s:.1f}s; step median {med * 1e3:.1f} ms over {args.repeats} "
          f"({', '.join(f'{x * 1e3:.0f}' for x in times)}); {tokens / med:.0f} tokens/s")
    print(f"model FLOPs/step {total / 1e9:.2f} G; matmul peak {peak / 1e9:.1f} GFLOP/s (measured now); "
          f"MFU {flops.mfu(total, med, peak, denom_devices):.1%}")
    print(json.dumps({"task": args.task, "devices": n, "step_s": med, "tokens_per_s": tokens / med, "flops": total,
                      "peak": peak, "mfu": flops.mfu(total, med, peak, denom_devices), "compile_s": compile_s}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
