"""janusflow-sample: draw images from prompts, answer questions about an image, or chat about it.

    janusflow-sample generate [--checkpoint DIR] --prompt "..." [--prompt ...] [--prompts-file F]
                              [--num-images N] [--cfg W] [--seed 0] [--negative-prompt "..."] [--out samples/]
                              JanusFlow: [--steps 30] [--solver euler|heun]
                              Janus:     [--temperature 1.0] [--top-k K] [--top-p 1.0] [--greedy]
    janusflow-sample batch [--checkpoint DIR] --prompts FILE.jsonl --out DIR [--num-images N] [--seed S] [--cfg W]
                           [--batch-per-device 1] [--devices N] [--save-raw] [family options as generate]
                           [--coordinator HOST:PORT --num-processes N --process-id I]
                           one {"prompt": ..., "seed": 7, "count": 4, ...} a line → DIR/<index:05d>/samples/<k:04d>.png
                           + metadata.jsonl (GenEval's layout), data-parallel over every device of every process,
                           the same images whatever the devices, resumable (janusflow_jax/sampling/batch.py).
    janusflow-sample understand [--checkpoint DIR] --image FILE --question "..." [--max-new-tokens 64]
    janusflow-sample chat [--checkpoint DIR] --image FILE        (questions from standard input)

    janusflow-sample generate --plan --target T [--batch-per-device N] [--preset NAME | --checkpoint DIR]
                              [--mesh data=-1,fsdp=1,tensor=1] [--prompt-len 64] [--dtype bfloat16]
                              compiles the generation program ahead of time for a TPU/GPU target on this
                              machine (no weights) and reports memory, collectives, FLOPs and a roofline
                              estimate (janusflow_jax/plan.py); exit status 0 fits, 3 does not fit, 2 error.

`--checkpoint` takes a model of either family — JanusFlow or Janus (Janus-1.3B, Janus-Pro-1B/7B) —
as a janusflow-convert Orbax checkpoint or an official folder (the family is detected); without it
the small JanusFlow shipped with the package is used (the synthetic shapes world: one coloured
shape on a plain background, e.g. "a large red circle in the top left on a white background").
"""

from __future__ import annotations

import argparse
import os
import sys
import time


class CliError(Exception):
    pass


# generate options that only one family has: flag -> argparse keywords (defaults in FAMILY_DEFAULTS)
FAMILY_OPTIONS = {
    "JanusFlow": {
        "--steps": dict(type=int, help="ODE steps (default 30)"),
        "--solver": dict(choices=("euler", "heun"), help="ODE solver (default euler)"),
    },
    "Janus": {
        "--temperature": dict(type=float, help="image-token sampling temperature (default 1.0)"),
        "--top-k": dict(type=int, help="sample among the k most likely codes (default: all, as the official code)"),
        "--top-p": dict(type=float, help="nucleus sampling threshold (default 1.0: off)"),
        "--greedy": dict(action="store_const", const=True, help="argmax codes instead of sampling"),
    },
}
FAMILY_DEFAULTS = {
    "JanusFlow": {"steps": 30, "solver": "euler", "cfg": 2.0},
    "Janus": {"temperature": 1.0, "top_k": None, "top_p": 1.0, "greedy": False, "cfg": 5.0},
}
FAMILY_NAMES = {"janusflow": "JanusFlow", "janus": "Janus"}


def _family_options(args, family: str) -> dict:
    """The generate options of `family` with its defaults; an option of the other family is an error."""
    name = FAMILY_NAMES[family]
    for other, opts in FAMILY_OPTIONS.items():
        if other == name:
            continue
        given = [flag for flag in opts if getattr(args, flag[2:].replace("-", "_")) is not None]
        if given:
            own = ", ".join(FAMILY_OPTIONS[name])
            raise CliError(f"{', '.join(given)}: {other} option(s), but this is a {name} model (its options: {own})")
    out = dict(FAMILY_DEFAULTS[name])
    for flag in FAMILY_OPTIONS[name]:
        v = getattr(args, flag[2:].replace("-", "_"))
        if v is not None:
            out[flag[2:].replace("-", "_")] = v
    if args.cfg is not None:
        out["cfg"] = args.cfg
    return out


def _sampling_options(p: argparse.ArgumentParser) -> None:
    """The sampling options `generate` and `batch` share."""
    p.add_argument("--num-images", type=int, default=1, help="images per prompt (batch: where a line has no count)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance weight (JanusFlow 2.0, Janus 5.0)")
    p.add_argument("--seed", type=int, default=0, help="seed (batch: where a line has no seed)")
    p.add_argument("--negative-prompt", default=None)


def _family_groups(p: argparse.ArgumentParser) -> None:
    """Family-specific options: default None so that one given for the other family can be refused."""
    for family, opts in FAMILY_OPTIONS.items():
        grp = p.add_argument_group(f"{family} only")
        for flag, kw in opts.items():
            grp.add_argument(flag, default=None, **kw)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="janusflow-sample", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--checkpoint", default=None, help="Orbax checkpoint or official HF-format folder (default: the shipped model)"
    )
    common.add_argument("--vae", default=None, help="diffusers VAE folder (HF folders only; default CHECKPOINT/vae)")
    common.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    common.add_argument("--compile-cache", default=None, metavar="DIR", help="persistent XLA compilation cache")
    common.add_argument(
        "--decode-weights",
        choices=("auto", "sliced", "streamed"),
        default="auto",
        help="how token loops read the layers' weights: sliced once before the loop, or streamed (one layer's "
        "inside each step: less memory, a layer slice per step); auto streams narrow weights on CPU",
    )
    g = sub.add_parser("generate", parents=[common], help="text to image")
    g.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    g.add_argument("--prompts-file", default=None, help="one prompt per line")
    _sampling_options(g)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--out", default="samples")
    pl = g.add_argument_group("ahead-of-time plan (no weights, nothing generated)")
    pl.add_argument("--plan", action="store_true", help="compile for --target and report memory / collectives / MFU")
    pl.add_argument("--target", default=None, help="janusflow_jax.plan.TARGETS: v5e-8, v5p-128, 8xH100, …")
    pl.add_argument("--batch-per-device", type=int, default=1, help="images per batch shard (default 1)")
    pl.add_argument("--preset", default=None, help="architecture by name: janusflow-1.3b, janus-pro-1b, janus-pro-7b")
    pl.add_argument("--mesh", default=None, help="mesh axes, e.g. data=-1,fsdp=1,tensor=1 (default: all on data)")
    pl.add_argument("--prompt-len", type=int, default=64, help="prompt tokens (padded length, default 64)")
    _family_groups(g)
    b = sub.add_parser("batch", parents=[common], help="a JSONL prompt file → GenEval-style folders, on every device")
    b.add_argument("--prompts", required=True, metavar="FILE.jsonl", help='one {"prompt": ..., "seed", "count"} a line')
    b.add_argument("--out", required=True, metavar="DIR", help="DIR/<index>/samples/<k>.png + metadata.jsonl")
    _sampling_options(b)
    b.add_argument("--batch-per-device", type=int, default=1, help="images per device per batch (default 1)")
    b.add_argument("--devices", type=int, default=None, help="devices used per process (default: all)")
    b.add_argument("--save-raw", action="store_true", help="also write DIR/<index>/raw/<k>.npy (latents / codes)")
    b.add_argument("--coordinator", default=None, help="multi-process: address of process 0 (host:port)")
    b.add_argument("--num-processes", type=int, default=None)
    b.add_argument("--process-id", type=int, default=None)
    _family_groups(b)
    for name in ("understand", "chat"):
        u = sub.add_parser(name, parents=[common], help="answer questions about an image")
        u.add_argument("--image", required=True)
        if name == "understand":
            u.add_argument("--question", required=True)
        u.add_argument("--max-new-tokens", type=int, default=64)
        u.add_argument("--temperature", type=float, default=0.0)
        u.add_argument("--top-p", type=float, default=1.0)
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load(args, mesh=None, log=_log):
    import janusflow_jax

    if args.compile_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if args.checkpoint is not None and not os.path.exists(args.checkpoint):
        raise CliError(f"checkpoint {args.checkpoint} not found")
    t = time.perf_counter()
    model = janusflow_jax.load(args.checkpoint, vae_path=args.vae, dtype=args.dtype, mesh=mesh)
    log(f"loaded {args.checkpoint or 'the shipped model'} ({args.dtype}) in {time.perf_counter() - t:.1f}s")
    model.decode_weights = args.decode_weights
    return model


def _read_image(path: str):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise CliError(f"cannot read image {path}: {e}") from None


def _report(model, what: str) -> None:
    t = getattr(model, "timings", None) or {}
    _log(f"{what}: compile {t.get('compile_s', 0):.1f}s, run {t.get('run_s', 0):.2f}s")
    model.timings = {"compile_s": 0.0, "run_s": 0.0}


def _parse_mesh(text: str | None) -> dict | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or k.strip() not in ("data", "fsdp", "tensor"):
            raise CliError(f"--mesh {text!r}: give axis=size pairs over data, fsdp, tensor (e.g. data=-1,tensor=2)")
        try:
            out[k.strip()] = int(v)
        except ValueError:
            raise CliError(f"--mesh {text!r}: {v!r} is not an integer") from None
    return out


def plan_generate(args) -> int:
    """`generate --plan`: the compiled generation program for a target, reported; no weights."""
    from janusflow_jax import plan

    if args.target is None:
        raise CliError(f"--plan needs --target (one of {', '.join(plan.TARGETS)})")
    if args.batch_per_device <= 0 or args.prompt_len <= 1:
        raise CliError("--batch-per-device must be positive and --prompt-len at least 2")
    if args.preset and args.checkpoint:
        raise CliError("give --preset or --checkpoint, not both")
    if args.preset:
        family, cfg, vae_cfg = plan.model_preset(args.preset)
    else:
        family, cfg, vae_cfg = plan.model_from_folder(args.checkpoint, args.vae)
    o = _family_options(args, family)
    kw = dict(steps=o["steps"], solver=o["solver"]) if family == "janusflow" else {}
    p = plan.sample_plan(
        family,
        cfg,
        vae_cfg,
        args.target,
        batch_per_device=args.batch_per_device,
        mesh=_parse_mesh(args.mesh),
        dtype=args.dtype,
        prompt_len=args.prompt_len,
        decode_weights=args.decode_weights,
        **({"num_steps": kw["steps"], "solver": kw["solver"]} if kw else {}),
    )
    print(plan.report(p))
    return 0 if p.fits else 3


def generate(args) -> None:
    import numpy as np
    from PIL import Image

    from janusflow_jax.images import make_grid, save_png

    prompts = list(args.prompt)
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts += [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise CliError(f"cannot read {args.prompts_file}: {e.strerror}") from None
    if not prompts:
        raise CliError("no prompt given (--prompt or --prompts-file)")
    if args.num_images <= 0:
        raise CliError("--num-images must be positive")
    model = _load(args)
    o = _family_options(args, model.family)
    if model.family == "janus":
        if o["temperature"] <= 0 and not o["greedy"]:
            raise CliError("--temperature must be positive (or pass --greedy)")
        how = "greedy" if o["greedy"] else f"temperature {o['temperature']}, top-k {o['top_k']}, top-p {o['top_p']}"
        _log(f"sampling {len(prompts) * args.num_images} image(s), {how}, cfg {o['cfg']} (first call compiles)")
        images = model.generate_images(
            prompts,
            num_images=args.num_images,
            cfg_weight=o["cfg"],
            temperature=o["temperature"],
            top_k=o["top_k"],
            top_p=o["top_p"],
            greedy=o["greedy"],
            seed=args.seed,
            negative_prompt=args.negative_prompt,
            batch_size=args.batch_size,
            progress=True,
        )
    else:
        if o["steps"] <= 0:
            raise CliError("--steps must be positive")
        expanded = [p for p in prompts for _ in range(args.num_images)]
        _log(
            f"sampling {len(expanded)} image(s), {o['steps']} {o['solver']} steps, cfg {o['cfg']} (first call compiles)"
        )
        images = model.generate_images(
            expanded,
            num_steps=o["steps"],
            cfg_weight=o["cfg"],
            seed=args.seed,
            solver=o["solver"],
            negative_prompt=args.negative_prompt,
            batch_size=args.batch_size,
            progress=True,
        )
    _report(model, f"generated {len(images)} image(s)")
    os.makedirs(args.out, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(os.path.join(args.out, f"{i:04d}.png"))
    cols = min(len(images), args.num_images if len(prompts) > 1 else 8)
    save_png(os.path.join(args.out, "grid.png"), make_grid(np.asarray(images), cols=cols))
    print(f"wrote {len(images)} image(s) and grid.png to {args.out}")


def _sample_kwargs(o: dict, family: str) -> dict:
    """`generate_batch` keywords of a family from its `_family_options`."""
    if family == "janus":
        if o["temperature"] <= 0 and not o["greedy"]:
            raise CliError("--temperature must be positive (or pass --greedy)")
        return {"cfg_weight": o["cfg"], **{k: o[k] for k in ("temperature", "top_k", "top_p", "greedy")}}
    if o["steps"] <= 0:
        raise CliError("--steps must be positive")
    return {"num_steps": o["steps"], "solver": o["solver"], "cfg_weight": o["cfg"]}


def batch(args) -> None:
    """`batch`: a sampling job over every device of every process (janusflow_jax/sampling/batch.py)."""
    from janusflow_jax.sampling import batch as job
    from janusflow_jax.training.trainer import maybe_init_distributed

    if args.num_images <= 0 or args.batch_per_device <= 0:
        raise CliError("--num-images and --batch-per-device must be positive")
    if not 0 <= args.seed < job.SEED_LIMIT:
        raise CliError(f"--seed must be {job.SEED_RULE}, got {args.seed}")
    prompts = job.read_prompts(args.prompts, seed=args.seed, count=args.num_images)  # before any device use
    maybe_init_distributed(args.coordinator, args.num_processes, args.process_id)
    import jax

    log = _log if jax.process_index() == 0 else (lambda m: None)
    model = _load(args, mesh=job.job_mesh(args.devices), log=log)
    o = _family_options(args, model.family)
    kwargs = _sample_kwargs(o, model.family)
    checkpoint = os.path.abspath(args.checkpoint) if args.checkpoint else "shipped"
    settings = {"family": model.family, "checkpoint": checkpoint, "vae": args.vae, "dtype": args.dtype, **kwargs}
    summary = job.run_job(
        model,
        prompts,
        args.out,
        sample_kwargs=kwargs,
        settings=settings,
        negative_prompt=args.negative_prompt,
        batch_per_device=args.batch_per_device,
        save_raw=args.save_raw,
        path=args.prompts,
        log=log,
    )
    if jax.process_index() == 0:
        print(job.summary_line(summary))


def understand(args) -> None:
    image = _read_image(args.image)
    model = _load(args)
    answer = model.answer(
        [image], [args.question], max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p
    )[0]
    _report(model, "answered")
    print(answer)


def chat(args) -> None:
    image = _read_image(args.image)
    model = _load(args)
    proc = model.processor
    history: list[dict] = []
    _log("chat: type a question per line; an empty line or end of input ends the conversation")
    for line in sys.stdin:
        question = line.strip()
        if not question:
            break
        content = f"{proc.image_tag}\n{question}" if not history else question
        history += [{"role": proc.roles[0], "content": content}, {"role": proc.roles[1], "content": ""}]
        answer = model.answer(
            [image], [history], max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p
        )[0]
        history[-1]["content"] = answer
        print(answer, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from janusflow_jax.config import ConfigError
    from janusflow_jax.model import LoadError
    from janusflow_jax.processing import ProcessorError
    from janusflow_jax.safetensors_io import WeightFileError
    from janusflow_jax.weights import ConversionError

    from janusflow_jax.plan import PlanError
    from janusflow_jax.sampling.batch import PromptFileError

    try:
        if args.mode == "generate" and args.plan:
            return plan_generate(args)
        {"generate": generate, "batch": batch, "understand": understand, "chat": chat}[args.mode](args)
    except PromptFileError as e:
        for line in e.problems:
            print(f"janusflow-sample: error: {line}", file=sys.stderr)
        print(f"janusflow-sample: error: {e}", file=sys.stderr)
        return 2
    except (
        PlanError,
        CliError,
        ValueError,
        ConfigError,
        LoadError,
        ProcessorError,
        WeightFileError,
        ConversionError,
        OSError,
    ) as e:
        print(f"janusflow-sample: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
