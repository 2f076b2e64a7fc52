"""janusflow-sample: draw images from prompts, answer questions about an image, or chat about it.

    janusflow-sample generate [--checkpoint DIR] --prompt "..." [--prompt ...] [--prompts-file F]
                              [--num-images N] [--cfg W] [--seed 0] [--negative-prompt "..."] [--out samples/]
                              JanusFlow: [--steps 30] [--solver euler|heun]
                              Janus:     [--temperature 1.0] [--top-k K] [--top-p 1.0] [--greedy]
    janusflow-sample understand [--checkpoint DIR] --image FILE --question "..." [--max-new-tokens 64]
    janusflow-sample chat [--checkpoint DIR] --image FILE        (questions from standard input)

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
    g = sub.add_parser("generate", parents=[common], help="text to image")
    g.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    g.add_argument("--prompts-file", default=None, help="one prompt per line")
    g.add_argument("--num-images", type=int, default=1, help="images per prompt")
    g.add_argument("--cfg", type=float, default=None, help="classifier-free guidance weight (JanusFlow 2.0, Janus 5.0)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--out", default="samples")
    # family-specific options: default None so that one given for the other family can be refused
    for family, opts in FAMILY_OPTIONS.items():
        grp = g.add_argument_group(f"{family} only")
        for flag, kw in opts.items():
            grp.add_argument(flag, default=None, **kw)
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


def _load(args):
    import janusflow_jax

    if args.compile_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if args.checkpoint is not None and not os.path.exists(args.checkpoint):
        raise CliError(f"checkpoint {args.checkpoint} not found")
    t = time.perf_counter()
    model = janusflow_jax.load(args.checkpoint, vae_path=args.vae, dtype=args.dtype)
    _log(f"loaded {args.checkpoint or 'the shipped model'} ({args.dtype}) in {time.perf_counter() - t:.1f}s")
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

    try:
        {"generate": generate, "understand": understand, "chat": chat}[args.mode](args)
    except (
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
