"""Janus text-to-image benchmark of janusflow-jax: `python sample/bench.py --family janus [...]`.

    python sample/bench.py --family janus --save /tmp/janusw          # random seeded weights → official folder
    python sample/bench.py --family janus --weights /tmp/janusw --json ours.json
    python sample/bench.py --family janus --compare ours*.json official*.json transformers*.json

Geometry `bench-janus` (sample/configs/bench-janus/): the JanusFlow bench LLM (hidden 512, 4 layers,
8 heads, MLP 1408, vocab 4096) and SigLIP (384 px, patch 16, width 256, 2 blocks), the real VQ-16
(16384 × 8 codebook, ch 128, ch_mult [1,1,2,2,4], z 256, 2 res blocks), 576 image tokens (384 px),
two prompts × two images (CFG rows 8), CFG weight 5, temperature 1, the full distribution (no top-k).
The weights are random (seed 0) unless `--weights` names an official-layout folder; `--save DIR`
writes the random weights as one (`sample/janus_bench_weights.py`), so that the official procedure and
transformers' port (`sample/bench_janus_official.py`) time the same weights.

Phases, each the median of `--repeats` runs after a warm-up (the first call compiles):
  * token loop: `sample_image_tokens` (CFG rows, prompt prefill, 576 tokens) for the 4 images; the
    prefill is the same call with 1 token; a step is (loop − prefill) / 575. The step is compared with
    its bandwidth floor: the bytes of the weights one step reads (the 4 LLM layers, final norm,
    gen_head, gen_aligner) ÷ the read bandwidth measured in the same run (an XLA reduction over 256 MiB);
    the KV bytes a step reads as the cache is laid out are listed beside it. The prefill is compared with
    its FLOPs ÷ the matmul peak measured in the same run.
  * VQ decode: `vq_decode` of the 4 images' codes; GFLOP per image (analytic: convolutions, 1×1 convs
    and attention; XLA's `cost_analysis` beside it), achieved GFLOP/s vs the matmul peak and vs a plain
    XLA 3×3 convolution at the decoder's full-resolution shape, measured in the same run.
  * end to end: `generate_images` (prompts → uint8 images, everything in one compiled program).
The machine may be shared: every run also records the CPU time this process got per wall second
(2.0 = both cores) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "configs", "bench-janus")


# --- machine --------------------------------------------------------------------------------------


def cpu_info() -> dict:
    """Model name, core count and the vector extensions that matter for the kernels (from /proc/cpuinfo)."""
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        first = text.split("\n\n")[0]
        fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        flags = set(fields.get("flags", "").split())
        info.update(
            model_name=fields.get("model name", "?"),
            family=fields.get("cpu family"),
            model=fields.get("model"),
            avx2="avx2" in flags,
            avx512f="avx512f" in flags,
            avx512_bf16="avx512_bf16" in flags,
            amx="amx_tile" in flags,
        )
    except OSError:
        pass
    return info


def cpu_line(info: dict) -> str:
    isa = "AVX-512" if info.get("avx512f") else ("AVX2" if info.get("avx2") else "no AVX2")
    fam = f" (family {info.get('family')} model {info.get('model')})" if info.get("family") else ""
    return f"{info.get('model_name', '?')}{fam}, {info.get('cores')} cores, {isa}" + (
        " (+bf16)" if info.get("avx512_bf16") else ""
    )


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(v) - v[3] - v[4], sum(v)


class Load:
    """What one timed region got: CPU s of this process per wall s (`cores`) and the cores the rest of
    the machine kept busy meanwhile (`others`: all CPUs' busy time minus this process's, from
    /proc/stat; > ~0.2 means the run shared the machine)."""

    def __enter__(self):
        self.j0, self.c0, self.t0 = _busy_jiffies(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        own = time.process_time() - self.c0
        self.cores = own / self.wall
        j1 = _busy_jiffies()
        self.others = None
        if self.j0 and j1:
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            self.others = max(0.0, ((j1[0] - self.j0[0]) / hz - own) / self.wall)
        return False


def timed(fn, repeats: int, sync=None):
    """(first call s, median s, [runs s], [CPU s per wall s of each run], [other processes' busy cores
    during each run]) after one warm-up call."""
    sync = sync or (lambda x: x)
    t = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - t
    sync(fn())  # warm-up (not timed)
    times, cores, others = [], [], []
    for _ in range(repeats):
        with Load() as ld:
            sync(fn())
        times.append(ld.wall)
        cores.append(ld.cores)
        others.append(ld.others)
    return first, statistics.median(times), times, cores, others


def read_bandwidth() -> tuple[float, str]:
    """Best read bandwidth (bytes/s) of XLA reductions over a 256 MiB float32 array."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((64 * 2**20,), jnp.float32)
    best, how = 0.0, ""
    for name, f in (("sum", lambda a: jnp.sum(a)), ("row sums", lambda a: jnp.sum(a.reshape(64, -1), axis=1))):
        g = jax.jit(f)
        jax.block_until_ready(g(x))
        for _ in range(7):
            t = time.perf_counter()
            jax.block_until_ready(g(x))
            bw = x.nbytes / (time.perf_counter() - t)
            if bw > best:
                best, how = bw, name
    return best, f"XLA {how} over 256 MiB"


def conv_peak(side: int, ch: int, repeats: int = 3) -> float:
    """FLOP/s of one plain XLA 3×3 convolution (SAME, NHWC/HWIO) `[1, side, side, ch] → ch`."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (1, side, side, ch), jnp.float32)
    k = jax.random.normal(jax.random.key(1), (3, 3, ch, ch), jnp.float32) * 0.03
    f = jax.jit(
        lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )
    jax.block_until_ready(f(x, k))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(x, k))
        best = min(best, time.perf_counter() - t)
    return 2 * side * side * 9 * ch * ch / best


# --- analytic counts ------------------------------------------------------------------------------


def _conv(hw: int, cin: int, cout: int, k: int) -> int:
    return 2 * hw * k * k * cin * cout


def _res(hw: int, cin: int, cout: int) -> int:
    return _conv(hw, cin, cout, 3) + _conv(hw, cout, cout, 3) + (_conv(hw, cin, cout, 1) if cin != cout else 0)


def _attn(hw: int, c: int) -> int:
    return 4 * 2 * hw * c * c + 2 * 2 * hw * hw * c  # q, k, v, proj_out; scores and weighted sum


def vq_decode_flops(vq, grid: int) -> float:
    """FLOPs of `decode_code` for one image of `grid × grid` codes (convolutions, 1×1 convs, attention)."""
    mult = list(vq.decoder_ch_mult)
    side = grid
    hw = side * side
    cin = vq.ch * mult[-1]
    total = _conv(hw, vq.codebook_embed_dim, vq.z_channels, 1) + _conv(hw, vq.z_channels, cin, 3)
    total += 2 * _res(hw, cin, cin) + _attn(hw, cin)
    for i in range(len(mult)):
        level = len(mult) - 1 - i
        cout = vq.ch * mult[level]
        for j in range(vq.num_res_blocks + 1):
            total += _res(hw, cin if j == 0 else cout, cout)
            if i == 0:
                total += _attn(hw, cout)
        cin = cout
        if level != 0:
            side *= 2
            hw = side * side
            total += _conv(hw, cout, cout, 3)
    total += _conv(hw, cin, 3, 3)
    return float(total)


def step_weight_bytes(params: dict) -> int:
    """Bytes of the weights one token step reads: every LLM layer, the final norm, gen_head, gen_aligner."""
    from janusflow_jax.weights import flatten_params

    total = 0
    for path, leaf in flatten_params(params).items():
        p = ".".join(map(str, path))
        if p.startswith(("language_model.model.layers.", "language_model.model.norm.", "gen_head.", "gen_aligner.")):
            total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


def prefill_flops(cfg, rows: int, length: int) -> float:
    """The prompt prefill: every layer but the last in full, the last layer's keys/values for all
    positions and the rest for the last one (as `LlamaModel.prefill` runs it), gen_head on it."""
    from janusflow_jax import flops

    llm = cfg.llm
    nl = llm.num_hidden_layers
    full = flops.llm_flops(llm, rows, length) * (nl - 1) / nl
    kv = 2 * rows * length * llm.hidden_size * 2 * llm.num_key_value_heads * llm.head_dim
    last = flops.llm_flops(llm, rows, 1, cached=length - 1) / nl
    last -= 2 * rows * llm.hidden_size * 2 * llm.num_key_value_heads * llm.head_dim  # counted in kv
    head = (
        2
        * rows
        * (
            cfg.gen_head.n_embed * cfg.gen_head.image_token_embed
            + cfg.gen_head.image_token_embed * cfg.gen_head.image_token_size
        )
    )
    return float(full + kv + last + head)


def step_kv_bytes(cfg, rows: int, prompt_len: int, tokens: int) -> int:
    """Keys+values one step reads as `DecodeCache` lays them out: the prompt and every generated slot."""
    llm = cfg.llm
    item = np.dtype(llm.dtype).itemsize
    return 2 * llm.num_hidden_layers * rows * (prompt_len + tokens - 1) * llm.num_key_value_heads * llm.head_dim * item


def load_settings(config_dir: str) -> dict:
    """`bench_settings.json` of the geometry folder, else the bench-janus one (prompts, images, CFG)."""
    path = os.path.join(config_dir, "bench_settings.json")
    if not os.path.exists(path):
        path = os.path.join(DEFAULT_CONFIG, "bench_settings.json")
    with open(path) as f:
        return json.load(f)


# --- the benchmark --------------------------------------------------------------------------------


def _med(xs):
    return float(statistics.median(xs)) if xs else None


def run(args) -> dict:
    import jax

    from janusflow_jax import flops, host_memory

    if not args.default_malloc:
        host_memory.keep_host_memory()
    from flax import nnx

    import janusflow_jax
    from janusflow_jax.base import special_ids
    from janusflow_jax.janus import config as janus_config
    from janusflow_jax.janus.model import JanusModel

    settings = load_settings(args.config)
    info = cpu_info()
    print(f"CPU: {cpu_line(info)}; load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype {args.dtype}; "
          f"host memory reuse: {host_memory.reason}", flush=True)  # fmt: skip
    t = time.perf_counter()
    if args.weights:
        model = janusflow_jax.load(args.weights, dtype=args.dtype)
        how = f"weights from {args.weights}"
    else:
        cfg = janus_config.from_official_json(json.load(open(os.path.join(args.config, "config.json"))))
        model = JanusModel.init(cfg.with_dtype(args.dtype), seed=int(settings.get("seed", 0)),
                                processor_dir=args.config, **special_ids(args.config))  # fmt: skip
        how = f"random weights (seed {settings.get('seed', 0)})"
    print(f"{how}: {time.perf_counter() - t:.1f}s", flush=True)
    if args.save:
        from janus_bench_weights import write_official_folder

        t = time.perf_counter()
        n = write_official_folder(model, args.save, args.config)
        print(f"wrote {n} tensors in the official layout to {args.save} (read back and checked): "
              f"{time.perf_counter() - t:.1f}s", flush=True)  # fmt: skip
    cfg = model.cfg
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(model.params))
    prompts = settings["prompts"]
    per = int(settings["images_per_prompt"])
    w, temp, seed = float(settings["cfg_weight"]), float(settings["temperature"]), int(settings.get("seed", 0))
    n_tok, grid = cfg.num_gen_tokens, cfg.gen_grid
    n_img = len(prompts) * per
    rows = 2 * n_img
    ids, mask = model.processor.encode_generation(prompts)

    peak = flops.matmul_peak(args.dtype)
    bw, bw_how = read_bandwidth()
    c_side, c_ch = cfg.gen_image_size, cfg.vq.ch * cfg.vq.decoder_ch_mult[0]
    cpeak = conv_peak(c_side, c_ch)
    print(f"measured: matmul peak {peak / 1e9:.1f} GFLOP/s; XLA 3x3 conv ({c_side}² × {c_ch} → {c_ch}) "
          f"{cpeak / 1e9:.1f} GFLOP/s; read bandwidth {bw / 1e9:.1f} GB/s ({bw_how})", flush=True)  # fmt: skip
    out = {
        "side": "janusflow-jax",
        "jax": jax.__version__,
        "cpu": info,
        "dtype": args.dtype,
        "weights": args.weights or "random",
        "geometry": dict(
            prompts=len(prompts),
            images_per_prompt=per,
            cfg_rows=rows,
            tokens=n_tok,
            prompt_len=int(ids.shape[1]),
            image_size=cfg.gen_image_size,
        ),  # fmt: skip
        "peaks": dict(
            matmul_flops=peak, conv3x3_flops=cpeak, conv3x3_shape=[c_side, c_ch], read_bw=bw, read_bw_how=bw_how
        ),
        "load_avg_start": os.getloadavg()[0],
    }
    what = set(args.what.split(","))
    sync = jax.block_until_ready
    codes = None

    if "loop" in what:

        def loop(n):
            return lambda: model.sample_image_tokens(
                ids, prompt_mask=mask, cfg_weight=w, temperature=temp, num_images=per, num_tokens=n, seed=seed
            )

        f1, p_med, p_all, _, _ = timed(loop(1), args.repeats, sync)
        fN, l_med, l_all, l_cores, l_others = timed(loop(n_tok), args.repeats, sync)
        codes = np.asarray(loop(n_tok)())
        step = (l_med - p_med) / (n_tok - 1)
        wbytes = step_weight_bytes(params)
        kvbytes = step_kv_bytes(cfg, rows, int(ids.shape[1]), n_tok)
        pf = prefill_flops(cfg, rows, int(ids.shape[1]))
        out["loop"] = dict(
            first_s=fN, median_s=l_med, runs_s=l_all, cores=l_cores, others=l_others, prefill_first_s=f1, prefill_s=p_med,
            prefill_runs_s=p_all, step_ms=step * 1e3, per_image_s=l_med / n_img, steps=n_tok - 1,
            step_weight_bytes=wbytes, step_kv_bytes=kvbytes, step_floor_ms=wbytes / bw * 1e3,
            step_vs_floor=step / (wbytes / bw), prefill_flops=pf, prefill_mfu=pf / p_med / peak,
            prefill_floor_s=pf / peak, codes_ok=bool(codes.shape == (n_img, n_tok) and codes.min() >= 0),
        )  # fmt: skip

    if "vq" in what:
        if codes is None:
            codes = np.asarray(jax.random.randint(jax.random.key(5), (n_img, n_tok), 0, cfg.image_token_size), np.int32)
        c3 = codes.reshape(n_img, grid, grid).astype(np.int32)
        fv, v_med, v_all, v_cores, v_others = timed(lambda: model.vq_decode(c3), args.repeats, sync)
        gf = vq_decode_flops(cfg.vq, grid)
        xla_flops = None
        try:
            from janusflow_jax.janus.model import _vq_decode

            ca = _vq_decode.lower(model.graphdef, model.params, jax.numpy.asarray(c3)).compile().cost_analysis()
            ca = ca[0] if isinstance(ca, (list, tuple)) else ca
            xla_flops = float(ca.get("flops", 0.0)) / n_img or None
        except Exception as e:  # cost_analysis is best effort
            print(f"(cost_analysis unavailable: {type(e).__name__}: {e})")
        per_img = v_med / n_img
        out["vq"] = dict(
            first_s=fv, median_s=v_med, runs_s=v_all, cores=v_cores, others=v_others, images=n_img, per_image_s=per_img,
            flops_per_image=gf, xla_flops_per_image=xla_flops, achieved_flops=gf / per_img,
            vs_matmul_peak=gf / per_img / peak, vs_conv_peak=gf / per_img / cpeak, floor_s=gf / peak,
        )  # fmt: skip

    if "e2e" in what:

        def e2e():
            return model.generate_images(prompts, cfg_weight=w, temperature=temp, num_images=per, seed=seed)

        fe, e_med, e_all, e_cores, e_others = timed(e2e, args.repeats)
        img = e2e()
        out["e2e"] = dict(first_s=fe, median_s=e_med, runs_s=e_all, cores=e_cores, others=e_others, per_image_s=e_med / n_img,
                          images=list(img.shape), mean_pixel=float(img.mean()))  # fmt: skip
    out["load_avg_end"] = os.getloadavg()[0]
    return out


# --- reporting ------------------------------------------------------------------------------------


def _f(x, fmt="{:.3f}", none="—"):
    return none if x is None else fmt.format(x)


def print_table(r: dict) -> None:
    g = r["geometry"]
    pk = r["peaks"]
    print(f"\n{r['side']} — {g['prompts']} prompts × {g['images_per_prompt']} images (CFG rows {g['cfg_rows']}, "
          f"prompt {g['prompt_len']} tokens), {g['tokens']} tokens, {g['image_size']} px, {r.get('dtype', 'float32')}")  # fmt: skip
    print(f"CPU: {cpu_line(r['cpu'])}; load average {r.get('load_avg_start', 0):.2f} → {r.get('load_avg_end', 0):.2f}")
    print(f"floors from this run: matmul peak {pk['matmul_flops'] / 1e9:.1f} GFLOP/s, 3x3 conv "
          f"{pk['conv3x3_flops'] / 1e9:.1f} GFLOP/s, read bandwidth {pk['read_bw'] / 1e9:.1f} GB/s")  # fmt: skip
    rows = []
    if "loop" in r:
        lp = r["loop"]
        rows.append(("prefill (1st token)", f"{lp['prefill_s'] * 1e3:.1f} ms", f"{lp['prefill_floor_s'] * 1e3:.1f} ms",
                     f"{lp['prefill_s'] / lp['prefill_floor_s']:.1f}×",
                     f"{lp['prefill_flops'] / 1e9:.2f} GFLOP, MFU {lp['prefill_mfu']:.1%}"))  # fmt: skip
        rows.append(("token step (all rows)", f"{lp['step_ms']:.2f} ms", f"{lp['step_floor_ms']:.2f} ms",
                     f"{lp['step_vs_floor']:.1f}×",
                     f"weights {lp['step_weight_bytes'] / 1e6:.1f} MB/step ({lp['step_weight_bytes'] / (lp['step_ms'] / 1e3) / 1e9:.1f} GB/s); "
                     f"KV as laid out {lp['step_kv_bytes'] / 1e6:.1f} MB/step"))  # fmt: skip
        rows.append(("token loop", f"{lp['median_s']:.2f} s", "", "",
                     f"{lp['per_image_s']:.2f} s per image; {lp['steps']} steps; compile+run {lp['first_s']:.1f} s; "
                     f"CPU {statistics.median(lp['cores']):.2f} cores"))  # fmt: skip
    if "vq" in r:
        v = r["vq"]
        xf = f", XLA cost_analysis {v['xla_flops_per_image'] / 1e9:.1f}" if v.get("xla_flops_per_image") else ""
        rows.append(("VQ decode per image", f"{v['per_image_s']:.2f} s", f"{v['floor_s']:.2f} s",
                     f"{v['per_image_s'] / v['floor_s']:.1f}×",
                     f"{v['flops_per_image'] / 1e9:.1f} GFLOP{xf}; {v['achieved_flops'] / 1e9:.1f} GFLOP/s = "
                     f"{v['vs_matmul_peak']:.1%} of matmul peak, {v['vs_conv_peak']:.1%} of the 3x3 conv"))  # fmt: skip
    if "e2e" in r:
        e = r["e2e"]
        rows.append(("end to end per image", f"{e['per_image_s']:.2f} s", "", "",
                     f"{e['median_s']:.2f} s for {e['images'][0]} images (generate_images)"))  # fmt: skip
    w = [max(len(x[i]) for x in rows + [("phase", "median", "floor", "vs floor", "")]) for i in range(4)]
    print(f"{'phase':<{w[0]}}  {'median':>{w[1]}}  {'floor':>{w[2]}}  {'vs floor':>{w[3]}}  notes")
    for row in rows:
        print(f"{row[0]:<{w[0]}}  {row[1]:>{w[1]}}  {row[2]:>{w[2]}}  {row[3]:>{w[3]}}  {row[4]}")


CLEAN = 0.25  # a run is "clean" when the rest of the machine kept fewer cores than this busy


def _runs(r: dict, metric: str) -> list[tuple[float, float | None]]:
    """(value, other processes' busy cores) of every timed run of one side's JSON for `metric`."""
    g = r.get("geometry", {})
    n_img = g.get("prompts", 0) * g.get("images_per_prompt", 0) or 1
    lp, vq, e2e = r.get("loop", {}), r.get("vq", {}), r.get("e2e", {})

    def zipped(d, vals):
        return list(zip(vals, d.get("others") or [None] * len(vals)))

    if metric == "loop_per_image" and lp:
        return zipped(lp, [x / n_img for x in lp["runs_s"]])
    if metric == "step_ms" and lp:
        if "step_runs_ms" in lp:
            return zipped(lp, lp["step_runs_ms"])
        calls = g.get("prompts", 1) if r.get("side") == "official" else 1  # official: one call per prompt
        return zipped(lp, [(x - lp["prefill_s"]) / lp["steps"] / calls * 1e3 for x in lp["runs_s"]])
    if metric == "prefill_ms" and lp:
        return [(x * 1e3, None) for x in lp["prefill_runs_s"]]
    if metric == "vq_per_image" and vq:
        return zipped(vq, [x / vq.get("images", n_img) for x in vq["runs_s"]])
    if metric == "e2e_per_image" and e2e:
        n = e2e.get("images", n_img)
        n = n[0] if isinstance(n, list) else n
        return zipped(e2e, [x / n for x in e2e["runs_s"]])
    return []


def compare(paths: list[str]) -> int:
    """Medians over all timed runs of all rounds of each side, side by side, with ratios to
    janusflow-jax; runs during which other processes kept >= CLEAN cores busy are left out when clean
    runs exist (the counts say how many were used)."""
    sides: dict[str, list[dict]] = {}
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        sides.setdefault(r["side"], []).append(r)
    ours = "janusflow-jax"
    names = [s for s in (ours, "official", "transformers") if s in sides]
    names += [s for s in sides if s not in names]
    metrics = [
        ("token loop s per image", "loop_per_image"),
        ("token step ms (as run)", "step_ms"),
        ("prefill ms (as run)", "prefill_ms"),
        ("VQ decode s per image", "vq_per_image"),
        ("end to end s per image", "e2e_per_image"),
    ]

    def med(side, metric):
        runs = [x for r in sides[side] for x in _runs(r, metric)]
        clean = [v for v, o in runs if o is None or o < CLEAN]
        use = clean or [v for v, _ in runs]
        return (_med(use), len(use), len(runs)) if runs else (None, 0, 0)

    print("rounds (JSON files): " + ", ".join(f"{s} {len(sides[s])}" for s in names))
    print(f"{'phase':<24}" + "".join(f"{s:>22}" for s in names) + "".join(f"{s + ' / ours':>22}" for s in names if s != ours))
    for label, metric in metrics:
        vals = {s: med(s, metric) for s in names}
        line = f"{label:<24}"
        for s in names:
            v, k, n = vals[s]
            line += f"{_f(v, '{:.3f}') + f' ({k}/{n})':>22}"
        for s in names:
            if s != ours:
                a, b = vals[s][0], vals.get(ours, (None,))[0]
                line += f"{_f(a / b if a and b else None, '{:.2f}×'):>22}"
        print(line)
    print(f"(k/n): medians over k of n timed runs — the runs with other processes below {CLEAN} busy cores")
    if ours in sides:

        def m(*keys):
            vals = []
            for r in sides[ours]:
                x = r
                for k in keys:
                    x = x.get(k) if isinstance(x, dict) else None
                if x is not None:
                    vals.append(x)
            return _med(vals) or 0.0

        floor = m("loop", "step_floor_ms")
        step = med(ours, "step_ms")[0] or 0.0
        vq = med(ours, "vq_per_image")[0] or 0.0
        gf = m("vq", "flops_per_image")
        print(f"janusflow-jax vs its floors (medians): token step {step:.2f} ms = {step / floor if floor else 0:.1f}× the "
              f"bandwidth floor {floor:.2f} ms ({m('loop', 'step_weight_bytes') / 1e6:.1f} MB of weights at "
              f"{m('peaks', 'read_bw') / 1e9:.1f} GB/s); prefill MFU {m('loop', 'prefill_mfu'):.1%}; VQ decode "
              f"{gf / vq / 1e9 if vq else 0:.1f} GFLOP/s = {gf / vq / m('peaks', 'matmul_flops') if vq else 0:.1%} of the "
              f"matmul peak ({m('peaks', 'matmul_flops') / 1e9:.0f} GFLOP/s), "
              f"{gf / vq / m('peaks', 'conv3x3_flops') if vq else 0:.1%} of a plain XLA 3x3 conv "
              f"({m('peaks', 'conv3x3_flops') / 1e9:.0f} GFLOP/s)")  # fmt: skip
    for s in names:
        loads = [r.get("load_avg_start", 0) for r in sides[s]]
        cores = [c for r in sides[s] for c in r.get("loop", {}).get("cores", [])]
        print(f"{s}: load average at start {min(loads):.1f}–{max(loads):.1f}; CPU cores it got in the loop runs "
              f"(median) {_med(cores) or 0:.2f}")  # fmt: skip
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sample/bench.py --family janus", description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="janus", choices=["janus"])
    ap.add_argument(
        "--config", default=DEFAULT_CONFIG, help="geometry folder (config.json, bench_settings.json, tokenizer)"
    )
    ap.add_argument("--weights", default=None, help="official-layout Janus folder to time instead of random weights")
    ap.add_argument("--save", default=None, help="write the (random) weights here in the official layout")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--what", default="loop,vq,e2e")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument(
        "--compare", nargs="+", default=None, help="JSON files of any sides/rounds: print them side by side"
    )
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc malloc as it is (see sample/bench.py)")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(args.compare)
    sys.path.insert(0, HERE)
    out = run(args)
    print_table(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
