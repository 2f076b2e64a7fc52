"""janusflow-eval: evaluate a model on the held-out split of a synthetic world.

    janusflow-eval shapes-vae --vae DIR     (judge a VAE's reconstructions of all 540 combinations)
    janusflow-eval geneval-vae --vae DIR    (… of all 545 GenEval-world specs)
    janusflow-eval shapes [--checkpoint DIR] [--steps 30] [--cfg 2.0] [--solver euler|heun] [--seed 0]
                          [--limit N] [--also "10:euler" --also "10:heun"] [--out DIR] [--json FILE]
    janusflow-eval geneval [--checkpoint DIR] [--per-kind N] [--images-per-prompt N] [--seed 0]
                           [--sampler S ...] [--cfg W] [--out DIR] [--json FILE]
                           [--skip-generation] [--understanding-split heldout|train|both]

Without `--checkpoint` the shipped default model is evaluated. shapes: one image per held-out
canonical caption, judged from its pixels; the five questions about every held-out combination;
writes OUT/grid_<steps>_<solver>.png. geneval (either family): GenEval-style scores per task kind
(the fraction of images satisfying every stated constraint) and overall, understanding accuracy per
question kind; writes OUT/geneval_<sampler>.png, each image framed green (judged right) or red.
Samplers: JanusFlow `STEPS:SOLVER` (default 30:euler), Janus `sample` (temperature --temperature,
default) or `greedy`. `--understanding-split train` asks the same questions about training renders
(as many specs per kind): held-out far below train means memorised, not learned.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


class CliError(Exception):
    pass


def _model_options(p: argparse.ArgumentParser, out: str, checkpoint_help: str) -> None:
    """The options `shapes` and `geneval` share: the model, seed, batching, outputs."""
    p.add_argument("--checkpoint", default=None, help=checkpoint_help)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--skip-understanding", action="store_true")
    p.add_argument("--out", default=out, help="folder for the PNG grids")
    p.add_argument("--json", default=None, help="also write the figures as JSON here")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="janusflow-eval", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="task", required=True)
    s = sub.add_parser("shapes", help="held-out shapes-world generation and understanding accuracy")
    _model_options(s, "eval_shapes", "checkpoint (default: the shipped model)")
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--cfg", type=float, default=2.0)
    s.add_argument("--solver", choices=("euler", "heun"), default="euler")
    s.add_argument("--also", action="append", default=[], metavar="STEPS:SOLVER", help="extra sampler settings")
    s.add_argument("--limit", type=int, default=None, help="only N held-out combinations, evenly spread")
    g = sub.add_parser("geneval", help="held-out GenEval-world scores per task kind, understanding per question kind")
    _model_options(g, "eval_geneval", "checkpoint of either family (default: the shipped model)")
    g.add_argument(
        "--sampler",
        action="append",
        default=None,
        metavar="S",
        help="JanusFlow STEPS:SOLVER, Janus sample|greedy; repeat for several (default 30:euler | sample)",
    )
    g.add_argument("--cfg", type=float, default=None, help="CFG weight (default: the family's, 2 | 5)")
    g.add_argument("--temperature", type=float, default=1.0, help="Janus `sample`: the sampling temperature")
    g.add_argument("--per-kind", type=int, default=None, help="only N prompts per task kind, evenly spread")
    g.add_argument("--images-per-prompt", type=int, default=1)
    g.add_argument("--skip-generation", action="store_true", help="understanding only (e.g. an und-only run)")
    g.add_argument(
        "--understanding-split",
        choices=("heldout", "train", "both"),
        default="heldout",
        help="ask about held-out renders, training renders (what was memorised), or both",
    )
    gv = sub.add_parser("geneval-vae", help="judge a VAE's reconstructions of all 545 GenEval-world specs")
    gv.add_argument("--vae", required=True, help="VAE export of janusflow-train (task vae), checkpoint or folder")
    gv.add_argument("--per-kind", type=int, default=None, help="only N specs per task kind, evenly spread")
    gv.add_argument("--out", default="eval_geneval", help="folder for the PNG grid")
    v = sub.add_parser("shapes-vae", help="judge a VAE's reconstructions of all 540 shapes combinations")
    v.add_argument("--vae", required=True, help="VAE export of janusflow-train (stage vae), checkpoint or folder")
    v.add_argument("--every", type=int, default=1, help="judge every Nth of the 540 combinations only")
    v.add_argument("--out", default="eval_shapes", help="folder for the PNG grid")
    return p


def _settings(args) -> list[tuple[int, str]]:
    out = [(args.steps, args.solver)]
    for spec in args.also:
        steps, _, solver = spec.partition(":")
        try:
            n = int(steps)
        except ValueError:
            raise CliError(f"--also {spec!r}: expected STEPS:SOLVER, e.g. 10:heun") from None
        if solver not in ("euler", "heun"):
            raise CliError(f"--also {spec!r}: solver must be euler or heun")
        out.append((n, solver))
    if any(n <= 0 for n, _ in out):
        raise CliError("step counts must be positive")
    return out


def shapes(args) -> dict:
    import janusflow_jax
    from janusflow_jax.images import make_grid, save_png
    from janusflow_jax.shapes import evaluate, world

    settings = _settings(args)
    if args.limit is not None and args.limit <= 0:
        raise CliError("--limit must be positive")
    if args.checkpoint is not None and not os.path.exists(args.checkpoint):
        raise CliError(f"checkpoint {args.checkpoint} not found")
    combos = world.combinations("heldout")
    if args.limit is not None and args.limit < len(combos):  # evenly spread, so every shape appears
        combos = [combos[i * len(combos) // args.limit] for i in range(args.limit)]
    model = janusflow_jax.load(args.checkpoint, dtype=args.dtype)
    figures: dict = {"checkpoint": args.checkpoint or "default", "combinations": len(combos), "generation": {}}
    for steps, solver in settings:
        rep = evaluate.evaluate_generation(
            model,
            combos,
            num_steps=steps,
            cfg_weight=args.cfg,
            solver=solver,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        label = f"{steps} {solver} steps, cfg {args.cfg:g}"
        print(evaluate.format_generation(rep, label), flush=True)
        path = save_png(os.path.join(args.out, f"grid_{steps}_{solver}.png"), make_grid(rep.images, cols=10))
        print(f"wrote {path}", flush=True)
        figures["generation"][f"{steps}_{solver}"] = rep.accuracy
    if not args.skip_understanding:
        urep = evaluate.evaluate_understanding(model, combos)
        print(evaluate.format_understanding(urep), flush=True)
        figures["understanding"] = urep.accuracy
        wrong = [r for r in urep.answers if evaluate.normalise_answer(r[2]) != r[1]]
        for q, e, a in wrong[:10]:
            print(f"  wrong: {q!r} expected {e!r}, answered {a!r}")
    if args.json:
        _write_json(args.json, figures)
    return figures


def geneval_samplers(family: str, specs: list[str] | None, cfg: float | None, temperature: float) -> dict:
    """sampler name → keyword arguments of the family's `generate_images`."""
    out = {}
    if family == "janusflow":
        for spec in specs or ["30:euler"]:
            steps, _, solver = spec.partition(":")
            if not steps.isdigit() or int(steps) <= 0 or solver not in ("euler", "heun"):
                raise CliError(f"--sampler {spec!r}: a JanusFlow sampler is STEPS:SOLVER, e.g. 30:euler or 10:heun")
            out[f"{int(steps)}_{solver}"] = dict(
                num_steps=int(steps), solver=solver, cfg_weight=2.0 if cfg is None else cfg
            )
        return out
    for spec in specs or ["sample"]:
        if spec not in ("sample", "greedy"):
            raise CliError(f"--sampler {spec!r}: a Janus sampler is `sample` or `greedy`")
        if spec == "sample" and temperature <= 0:
            raise CliError("--temperature must be positive (or use --sampler greedy)")
        kw = dict(greedy=True) if spec == "greedy" else dict(temperature=temperature)
        out[spec] = dict(kw, cfg_weight=5.0 if cfg is None else cfg)
    return out


def _write_json(path: str, figures: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(figures, f, indent=1)
    os.replace(tmp, path)


def geneval(args) -> dict:
    import janusflow_jax
    from janusflow_jax.geneval import evaluate
    from janusflow_jax.images import save_png

    if args.per_kind is not None and args.per_kind <= 0:
        raise CliError("--per-kind must be positive")
    if args.images_per_prompt <= 0:
        raise CliError("--images-per-prompt must be positive")
    if args.checkpoint is not None and not os.path.exists(args.checkpoint):
        raise CliError(f"checkpoint {args.checkpoint} not found")
    model = janusflow_jax.load(args.checkpoint, dtype=args.dtype)
    samplers = geneval_samplers(model.family, args.sampler, args.cfg, args.temperature)
    specs = evaluate.prompt_specs(args.per_kind)
    figures: dict = {"checkpoint": args.checkpoint or "default", "family": model.family, "prompts": len(specs),
                     "images_per_prompt": args.images_per_prompt, "seed": args.seed, "generation": {}}  # fmt: skip
    for name, kw in ({} if args.skip_generation else samplers).items():
        rep = evaluate.evaluate_generation(
            model, specs, images_per_prompt=args.images_per_prompt, seed=args.seed, batch_size=args.batch_size, **kw
        )
        label = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in kw.items())
        print(evaluate.format_generation(rep, name), f"  [{label}]", sep="\n", flush=True)
        path = save_png(os.path.join(args.out, f"geneval_{name}.png"), evaluate.verdict_grid(rep))
        print(f"wrote {path}", flush=True)
        per_image = None if rep.run_seconds is None else rep.run_seconds / len(rep.specs)
        figures["generation"][name] = dict(rep.scores, seconds=rep.seconds, seconds_per_image=per_image, sampler=kw,
                                           extra_objects_allowed=rep.lenient)  # fmt: skip
    if args.skip_understanding:
        splits = []
    elif args.understanding_split == "both":
        splits = ["heldout", "train"]
    else:
        splits = [args.understanding_split]
    for split in splits:
        urep = evaluate.evaluate_understanding(model, evaluate.understanding_specs(split, args.per_kind), split=split)
        print(f"[{split} renders]", evaluate.format_understanding(urep), sep="\n", flush=True)
        figures["understanding" if split == "heldout" else "understanding_train"] = dict(urep.accuracy,
                                                                                       seconds=urep.seconds)  # fmt: skip
        wrong = [r for r in urep.rows if evaluate.normalise_answer(r[3]) != r[2]]
        for _, q, e, a in wrong[:10]:
            print(f"  wrong: {q!r} expected {e!r}, answered {a!r}")
    if args.json:
        _write_json(args.json, figures)
    return figures


def geneval_vae(args) -> dict:
    from janusflow_jax.geneval import evaluate
    from janusflow_jax.images import make_grid, save_png
    from janusflow_jax.model import load_vae

    if not os.path.exists(args.vae):
        raise CliError(f"VAE {args.vae} not found")
    if args.per_kind is not None and args.per_kind <= 0:
        raise CliError("--per-kind must be positive")
    cfg, params = load_vae(args.vae)
    specs = evaluate.spread_specs(args.per_kind)
    scores, recon = evaluate.evaluate_vae(cfg, params, specs)
    what = "all" if args.per_kind is None else f"{args.per_kind} per kind of the"
    print(f"VAE reconstructions of {what} {len(recon)} GenEval-world specs judged: "
          + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))  # fmt: skip
    print(f"wrote {save_png(os.path.join(args.out, 'vae_reconstructions.png'), make_grid(recon, cols=25))}")
    return scores


def shapes_vae(args) -> dict:
    from janusflow_jax.images import make_grid, save_png
    from janusflow_jax.model import load_vae
    from janusflow_jax.shapes import evaluate, world

    if not os.path.exists(args.vae):
        raise CliError(f"VAE {args.vae} not found")
    if args.every <= 0:
        raise CliError("--every must be positive")
    cfg, params = load_vae(args.vae)
    every = world.all_combinations()
    combos = every[:: args.every]
    which = f"all {len(every)}" if len(combos) == len(every) else f"{len(combos)} of the {len(every)}"
    acc, recon = evaluate.evaluate_vae(cfg, params, combos)
    print(f"VAE reconstructions judged on {which} combinations: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    print(f"wrote {save_png(os.path.join(args.out, 'vae_reconstructions.png'), make_grid(recon, cols=30))}")
    return acc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from janusflow_jax.config import ConfigError
    from janusflow_jax.model import LoadError

    try:
        {"shapes": shapes, "geneval": geneval, "shapes-vae": shapes_vae, "geneval-vae": geneval_vae}[args.task](args)
    except (CliError, ConfigError, LoadError, OSError, ValueError) as e:
        print(f"janusflow-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
