"""Training benchmark: step time, tokens/s and MFU of the jitted train step for a named size.

    python train/bench.py [--size bench] [--devices 1|8] [--stage 2] [--dtype float32] [--repeats 5]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python train/bench.py --devices 8

`bench` is the geometry of shared/reference/bench (sample/configs/bench/: LLM 512 wide × 4 layers, SigLIP
256 wide at 384 px, 48×48 latents = 576 image tokens). The batch is synthetic (random pixels and ids)
with `--gen/--und/--text` rows per device: generation rows run the VAE encoder, rectified flow and REPA,
understanding rows the 816-token prompt of the sampling benchmark with its answer, text rows 256 tokens.
MFU = model FLOPs (3× the forward of what the loss flows through + SigLIP's REPA forward) ÷ time ÷
(matmul peak measured in this run × devices). On simulated CPU devices (one host) the peak is the host's,
so MFU is reported against the single measured peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="bench")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--stage", default="2")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    p.add_argument("--gen", type=int, default=2, help="generation rows per device")
    p.add_argument("--und", type=int, default=1, help="understanding rows per device")
    p.add_argument("--text", type=int, default=1, help="text rows per device")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from janusflow_jax import config as config_lib, flops
    from janusflow_jax.config import VaeConfig
    from janusflow_jax.sharding import make_mesh, use_mesh
    from janusflow_jax.training import objective, state as S
    from janusflow_jax.training.step import StepStatics, train_step

    folder = os.path.join(os.path.dirname(HERE), "sample", "configs", args.size)
    with open(os.path.join(folder, "vae_config.json")) as f:
        vae_cfg = VaeConfig.from_diffusers(json.load(f))
    cfg = config_lib.load_official_config(folder).with_dtype(args.dtype, param_dtype="float32").with_remat(args.remat)
    vae_cfg = dataclasses.replace(vae_cfg, dtype="float32", param_dtype="float32")
    if len(jax.devices()) < args.devices:
        raise SystemExit(f"{args.devices} devices asked, {len(jax.devices())} present (set XLA_FLAGS on CPU)")
    mesh = make_mesh({"data": args.devices}, jax.devices()[: args.devices])
    ocfg = objective.ObjectiveConfig(repa_layer=min(2, cfg.llm.num_hidden_layers), repa_hidden=cfg.llm.hidden_size,
                                     und_image_size=cfg.siglip.image_size)
    with use_mesh(mesh):
        abstract = nnx.eval_shape(lambda: objective.TrainModules(cfg, vae_cfg, ocfg, rngs=nnx.Rngs(0)))
    gd, _ = nnx.split(abstract, nnx.Param)
    p_shard = S.param_shardings(abstract, mesh)

    def make():
        return nnx.to_pure_dict(nnx.split(objective.TrainModules(cfg, vae_cfg, ocfg, rngs=nnx.Rngs(0)), nnx.Param)[1])

    with use_mesh(mesh):
        params = jax.jit(make, out_shardings=p_shard)()
    labels = S.labels_for(params, args.stage)
    tx = S.make_optimizer(S.OptimConfig(lr=1e-4), labels)
    abstract_state = jax.eval_shape(lambda q: S.init_state(q, tx, labels, jax.random.key(0), False), params)
    shardings = S.state_shardings_for(abstract_state, p_shard, tx, mesh)
    with use_mesh(mesh):
        opt = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt, "ema": {},
             "key": jax.random.key_data(jax.random.key(0))}
    state = jax.device_put(state, shardings)

    n = args.devices
    rng = np.random.default_rng(0)
    side = cfg.latent_size(vae_cfg)
    n_img = cfg.num_gen_tokens(vae_cfg)
    lp, lu, lt = 32, 816 + 32, 256
    s_und = cfg.siglip.image_size
    batch = {}
    if args.gen:
        g = args.gen * n
        batch["gen"] = {"prompt_ids": rng.integers(1, 200, (g, lp)).astype(np.int32),
                        "prompt_mask": np.ones((g, lp), np.int32),
                        "image": rng.integers(0, 256, (g, cfg.gen_image_size, cfg.gen_image_size, 3)).astype(np.uint8)}
    if args.und:
        u = args.und * n
        seq = np.zeros((u, lu), bool)
        seq[:, 40 : 40 + cfg.siglip.num_patches + 1] = True
        lm = np.zeros((u, lu), np.float32)
        lm[:, 816:] = 1
        batch["und"] = {"ids": rng.integers(1, 200, (u, lu)).astype(np.int32), "mask": np.ones((u, lu), np.int32),
                        "loss_mask": lm, "pixel_values": rng.normal(size=(u, s_und, s_und, 3)).astype(np.float32),
                        "images_seq_mask": seq}
    if args.text:
        t = args.text * n
        batch["text"] = {"ids": rng.integers(1, 200, (t, lt)).astype(np.int32), "mask": np.ones((t, lt), np.int32),
                         "loss_mask": np.ones((t, lt), np.float32)}
    bs = jax.tree.map(lambda x: NamedSharding(mesh, P("data")), batch)
    batch = jax.device_put(batch, bs)
    statics = StepStatics(ocfg, (side, side, vae_cfg.latent_channels), n_img)
    rep = NamedSharding(mesh, P())
    step = jax.jit(functools.partial(train_step, gd, tx, labels, statics), in_shardings=(shardings, bs),
                   out_shardings=(shardings, rep), donate_argnums=0)

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
    fwd = 0.0
    frozen = 0.0
    if args.gen:
        fwd += flops.gen_step_flops(cfg, args.gen * n, side, lp, recompute=True)
        frozen += flops.siglip_flops(cfg.siglip, args.gen * n)
    if args.und:
        fwd += flops.siglip_flops(cfg.siglip, args.und * n) + flops.llm_flops(cfg.llm, args.und * n, lu, lm_head_tokens=lu)
    if args.text:
        fwd += flops.llm_flops(cfg.llm, args.text * n, lt, lm_head_tokens=lt)
    total = 3 * fwd + frozen
    tokens = (args.gen * (lp + n_img) + args.und * lu + args.text * lt) * n
    simulated = jax.devices()[0].platform == "cpu"
    denom_devices = 1 if simulated else n
    print(f"device: {jax.devices()[0].device_kind} × {n}{' (simulated on one host)' if simulated and n > 1 else ''}; "
          f"stage {args.stage}, {args.dtype}, remat {args.remat}")
    print(f"batch: {args.gen * n} gen ({lp}+{n_img} tokens, {cfg.gen_image_size}px), {args.und * n} und ({lu} tokens), "
          f"{args.text * n} text ({lt} tokens); loss {float(m['loss']):.4f}")
    print(f"compile {compile_s:.1f}s; step median {med * 1e3:.1f} ms over {args.repeats} "
          f"({', '.join(f'{x * 1e3:.0f}' for x in times)}); {tokens / med:.0f} tokens/s")
    print(f"model FLOPs/step {total / 1e9:.2f} G; matmul peak {peak / 1e9:.1f} GFLOP/s (measured now); "
          f"MFU {flops.mfu(total, med, peak, denom_devices):.1%}")
    print(json.dumps({"devices": n, "step_s": med, "tokens_per_s": tokens / med, "flops": total, "peak": peak,
                      "mfu": flops.mfu(total, med, peak, denom_devices), "compile_s": compile_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
