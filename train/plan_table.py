"""The README's "Plans on pods" table: ahead-of-time compiles of the real train steps of JanusFlow-1.3B
and Janus-Pro-7B (stages 2 and 3) and of their generation programs for pod targets, on this CPU machine.

    python train/plan_table.py [--out runs/plan_table] [--budget 7200] [--only v5e-8,8xH100] [--models janus-pro-7b]

Per (model, stage, target) one mesh and remat policy (the configs' fsdp layout over every chip, remat
full) and a descending list of batches per device: each is compiled in turn until one fits, so the row
is the largest of those tried that fits (powers of two, the first guess from the chip's HBM and the
v5e-8 measurement of JanusFlow-1.3B: 3.5 GiB of state + ~1.2 GiB per row). A state that cannot fit
(parameters + Adam + EMA per chip over the HBM) is reported from the hand count without compiling.
Every row is one command (`janusflow-train ... --plan ...`), printed with it. Results go to
OUT/results.jsonl as they come.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

CONFIGS = {
    "janusflow-1.3b": "train/configs/stage{stage}.yaml",
    "janus-pro-7b": "train/configs/janus-pro/stage{stage}.yaml",
}
FSDP = lambda n: {"data": 1, "fsdp": n, "tensor": 1}  # noqa: E731
TRAIN_ROWS = [  # preset, target, mesh, remat, batches per device to try (largest first)
    ("janusflow-1.3b", "8xH100", FSDP(8), "full", (32, 16, 8)),
    ("janusflow-1.3b", "v6e-8", FSDP(8), "full", (16, 8, 4)),
    ("janusflow-1.3b", "v5p-128", FSDP(64), "full", (32, 16, 8)),
    ("janusflow-1.3b", "v5e-8", FSDP(8), "full", (8, 4, 2)),
    ("janusflow-1.3b", "v5e-256", FSDP(256), "full", (8, 4, 2)),
    ("janus-pro-7b", "8xH100", FSDP(8), "full", (8, 4)),  # ≥ 3 rows: the mix has 3 kinds
    ("janus-pro-7b", "v6e-8", FSDP(8), "full", (4, 3)),
    ("janus-pro-7b", "v5p-128", FSDP(64), "full", (16, 8, 4)),
    ("janus-pro-7b", "v5e-8", FSDP(8), "full", (3,)),
    ("janus-pro-7b", "v5e-256", FSDP(256), "full", (8, 4, 3)),
]
SAMPLE_ROWS = [  # target, preset, mesh, batches per device to try (largest first)
    # JanusFlow-1.3B: 3.9 GiB of bf16 weights + ~0.14-0.18 GiB of temporaries per image (measured)
    ("8xH100", "janusflow-1.3b", {"data": -1, "fsdp": 1, "tensor": 1}, (512, 256)),
    ("v6e-8", "janusflow-1.3b", {"data": -1, "fsdp": 1, "tensor": 1}, (128, 64)),
    ("v5p-128", "janusflow-1.3b", {"data": -1, "fsdp": 1, "tensor": 1}, (512, 256)),
    ("v5e-8", "janusflow-1.3b", {"data": -1, "fsdp": 1, "tensor": 1}, (64, 32)),
    ("v5e-256", "janusflow-1.3b", {"data": -1, "fsdp": 1, "tensor": 1}, (64, 32)),
    ("8xH100", "janus-pro-7b", {"data": -1, "fsdp": 1, "tensor": 1}, (64, 32, 16)),
    ("v6e-8", "janus-pro-7b", {"data": -1, "fsdp": 1, "tensor": 2}, (16, 8, 4)),
    ("v5p-128", "janus-pro-7b", {"data": -1, "fsdp": 1, "tensor": 1}, (64, 32, 16)),
    ("v5e-8", "janus-pro-7b", {"data": 2, "fsdp": 1, "tensor": 4}, (16, 8, 4)),
    ("v5e-256", "janus-pro-7b", {"data": -1, "fsdp": 1, "tensor": 4}, (16, 8, 4)),
]


def mesh_arg(mesh: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.items())


def train_cmd(preset: str, stage: str, target: str, mesh: dict, remat: str, b: int) -> str:
    ov = " ".join(f"mesh.{k}={v}" for k, v in mesh.items())
    return (f"janusflow-train --config {CONFIGS[preset].format(stage=stage)} --plan --target {target} "
            f"model.preset={preset} model.remat={remat} {ov} --batch-per-device {b}")  # fmt: skip


def fit_descending(make, batches, log) -> tuple:
    """Compile each batch per device in `batches` (largest first) until one fits."""
    from janusflow_jax.plan import PlanError

    tried = []
    for b in batches:
        t = time.perf_counter()
        try:
            p = make(b)
        except PlanError as e:  # e.g. a compiler failure: the row says so, the table goes on
            log(f"  batch {b}: {e}")
            return None, tried + [str(e)]
        tried.append(p)
        log(f"  batch {b}: {'fits' if p.fits else 'does not fit'} {p.used_gib:.2f} GiB MFU {100 * p.mfu:.1f}% "
            f"({time.perf_counter() - t:.0f}s)")  # fmt: skip
        if p.fits:
            return p, tried
    return None, tried


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/plan_table")
    ap.add_argument("--budget", type=float, default=7200.0, help="seconds; rows not reached are listed as such")
    ap.add_argument("--only", default=None, help="comma-separated targets")
    ap.add_argument("--skip-targets", default=None, help="comma-separated targets not to run")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-sample", action="store_true")
    ap.add_argument("--batch", type=int, default=None, help="compile this one batch per device (no fitting)")
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--models", default=None, help="comma-separated presets (janusflow-1.3b, janus-pro-7b)")
    ap.add_argument("--decode-weights", default="auto", choices=("auto", "sliced", "streamed"),
                    help="sampling rows: how the token loop reads the layers' weights")
    args = ap.parse_args(argv)

    from janusflow_jax import plan
    from janusflow_jax.training.config import load_config

    os.makedirs(args.out, exist_ok=True)
    res_path = os.path.join(args.out, "results.jsonl")
    only = set(args.only.split(",")) if args.only else None
    skip = set(args.skip_targets.split(",")) if args.skip_targets else set()
    t0 = time.perf_counter()

    def log(m):
        print(m, file=sys.stderr, flush=True)

    def write(rec):
        with open(res_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def over():
        return time.perf_counter() - t0 > args.budget

    models = set(args.models.split(",")) if args.models else None
    if not args.skip_train:
        for preset, target, mesh, remat, batches in TRAIN_ROWS:
            if (only and target not in only) or target in skip or (models and preset not in models):
                continue
            tg = plan.get_target(target)
            for stage in args.stages.split(","):
                base = {"kind": "train", "preset": preset, "target": target, "stage": stage, "mesh": mesh,
                        "remat": remat}  # fmt: skip
                if over():
                    write(dict(base, skipped="time budget"))
                    continue
                cfg = load_config(os.path.join(REPO, CONFIGS[preset].format(stage=stage)),
                                  [f"model.preset={preset}", f"model.remat={remat}"], validate=False)  # fmt: skip
                log(f"train {preset} stage {stage} on {target} mesh {mesh} remat {remat}")

                def make(b, cfg=cfg, tg=tg, mesh=mesh, remat=remat):
                    return plan.train_plan(cfg, tg, mesh=mesh, remat=remat, batch_per_device=b)

                best, tried = fit_descending(make, (args.batch,) if args.batch else batches, log)
                errors = [p for p in tried if isinstance(p, str)]
                tried = [p for p in tried if not isinstance(p, str)]
                rec = dict(base, errors=errors,
                           tried=[(p.settings["batch_per_device"], p.fits, round(p.used_gib, 2), round(p.compile_s))
                                  for p in tried])  # fmt: skip
                if tried and best is None:
                    rec.update(gib=round(tried[-1].used_gib, 2), hbm=tg.hbm_gib, error=tried[-1].error,
                               state_gib=round(sum(tried[-1].bytes.get(k, 0) for k in ("params", "opt_state", "ema"))
                                               / plan.GIB, 2))  # fmt: skip
                if best is not None:
                    b = best.settings["batch_per_device"]
                    rec.update(batch_per_device=b, rows=best.settings["rows_per_device"],
                               global_batch=best.settings["global_batch"], gib=round(best.used_gib, 2),
                               hbm=tg.hbm_gib, mfu=round(100 * best.mfu, 1),
                               step_ms=round(best.times()["step"] * 1e3, 1),
                               cmd=train_cmd(preset, stage, target, mesh, remat, b),
                               last=plan.last_line(best))  # fmt: skip
                    print(plan.report(best), flush=True)
                write(rec)
    if not args.skip_sample:
        for target, preset, mesh, batches in SAMPLE_ROWS:
            if (only and target not in only) or target in skip or (models and preset not in models):
                continue
            if over():
                write({"kind": "sample", "target": target, "preset": preset, "skipped": "time budget"})
                continue
            family, cfg, vae = plan.model_preset(preset)
            tg = plan.get_target(target)
            log(f"sample {preset} on {target} mesh {mesh}")

            def make(b, family=family, cfg=cfg, vae=vae, tg=tg, mesh=mesh):
                return plan.sample_plan(family, cfg, vae, tg, batch_per_device=b, mesh=mesh, dtype="bfloat16",
                                        decode_weights=args.decode_weights)  # fmt: skip

            best, tried = fit_descending(make, (args.batch,) if args.batch else batches, log)
            errors = [p for p in tried if isinstance(p, str)]
            tried = [p for p in tried if not isinstance(p, str)]
            rec = {"kind": "sample", "target": target, "preset": preset, "mesh": mesh, "errors": errors,
                   "decode_weights": args.decode_weights,
                   "tried": [(p.settings["batch_per_device"], p.fits, round(p.used_gib, 2), round(p.compile_s))
                             for p in tried]}  # fmt: skip
            if best is not None:
                b = best.settings["batch_per_device"]
                rec.update(batch_per_device=b, gib=round(best.used_gib, 2), hbm=tg.hbm_gib,
                           mfu=round(100 * best.mfu, 1), step_ms=round(best.times()["step"] * 1e3, 1),
                           cmd=(f"janusflow-sample generate --plan --target {target} --preset {preset} "
                                f"--dtype bfloat16 --mesh {mesh_arg(mesh)} --batch-per-device {b}"
                                + ("" if args.decode_weights == "auto" else f" --decode-weights {args.decode_weights}")),
                           last=plan.last_line(best))  # fmt: skip
                print(plan.report(best), flush=True)
            write(rec)
    log(f"done in {time.perf_counter() - t0:.0f}s; results in {res_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
