"""The README's "Plans on pods" table: ahead-of-time compiles of JanusFlow-1.3B (stages 2 and 3) and
of the generation programs (JanusFlow-1.3B, Janus-Pro-7B) for pod targets, on this CPU machine.

    python train/plan_table.py [--out runs/plan_table] [--budget 3600] [--only v5e-8,8xH100]

Per target one mesh and remat policy (below, chosen for the chip's HBM: every mesh here keeps the
fp32 master weights, Adam moments and EMA fsdp-sharded; where the whole-parameter gather of
`sharding.data_parallel` does not fit a 16/32 GiB chip, tensor parallelism splits it). The batch
per device is fitted, not guessed: two compiles (8 and 16 rows per device, in the stage's mix)
give the per-device bytes as a line in the batch (the compiler reports its need even when it
refuses a program), the largest batch under the HBM is compiled, and stepped down until it fits.
Every row is one command (`janusflow-train ... --plan ...`), printed with it. Results go to
OUT/results.jsonl and OUT/table.md as they come.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

TRAIN_ROWS = [  # target, mesh, remat (the configs' own fsdp layout over every chip)
    ("8xH100", {"data": 1, "fsdp": 8, "tensor": 1}, "full"),
    ("v6e-8", {"data": 1, "fsdp": 8, "tensor": 1}, "full"),
    ("v5p-128", {"data": 1, "fsdp": 64, "tensor": 1}, "full"),
    ("v5e-8", {"data": 1, "fsdp": 8, "tensor": 1}, "full"),
    ("v5e-256", {"data": 1, "fsdp": 256, "tensor": 1}, "full"),
]
SAMPLE_ROWS = [  # target, preset, mesh
    ("v5e-8", "janusflow-1.3b", {"data": -1, "fsdp": 1, "tensor": 1}),
    ("8xH100", "janus-pro-7b", {"data": -1, "fsdp": 1, "tensor": 1}),
    ("8xH100", "janusflow-1.3b", {"data": -1, "fsdp": 1, "tensor": 1}),
    ("v5e-8", "janus-pro-7b", {"data": 2, "fsdp": 1, "tensor": 4}),
]


def mesh_arg(mesh: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.items())


def train_cmd(stage: str, target: str, mesh: dict, remat: str, b: int) -> str:
    ov = " ".join(f"mesh.{k}={v}" for k, v in mesh.items())
    return (f"janusflow-train --config train/configs/stage{stage}.yaml --plan --target {target} "
            f"model.preset=janusflow-1.3b model.remat={remat} {ov} --batch-per-device {b}")  # fmt: skip


def fit_batch(make, hbm: float, lo: int, hi: int, log) -> tuple:
    """Largest batch per device that fits: compile lo and hi, extrapolate linearly, verify."""
    tried = {}

    def run(b):
        if b not in tried:
            t = time.perf_counter()
            tried[b] = make(b)
            p = tried[b]
            log(f"  batch {b}: {'fits' if p.fits else 'does not fit'} {p.used_gib:.2f} GiB "
                f"MFU {100 * p.mfu:.1f}% ({time.perf_counter() - t:.0f}s)")  # fmt: skip
        return tried[b]

    a, b_ = run(lo), run(hi)
    slope = (b_.bytes["total"] - a.bytes["total"]) / (hi - lo)
    if slope <= 0:
        guess = hi
    else:
        guess = lo + int((0.97 * hbm - a.bytes["total"]) / slope)
    guess = max(1, min(guess, 512))
    for _ in range(3):
        if guess in tried and tried[guess].fits:
            break
        p = run(guess)
        if p.fits:
            break
        guess = max(1, int(guess * 0.85))
    ok = [p for p in tried.values() if p.fits]
    best = max(ok, key=lambda p: p.settings["batch_per_device"]) if ok else None
    return best, list(tried.values())


def fit_one(make, b: int, log) -> tuple:
    """One compile at batch `b` (what the README's measured rows are)."""
    t = time.perf_counter()
    p = make(b)
    log(f"  batch {b}: {'fits' if p.fits else 'does not fit'} {p.used_gib:.2f} GiB MFU {100 * p.mfu:.1f}% "
        f"({time.perf_counter() - t:.0f}s)")  # fmt: skip
    return (p if p.fits else None), [p]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/plan_table")
    ap.add_argument("--budget", type=float, default=3600.0, help="seconds; rows not reached are listed as such")
    ap.add_argument("--only", default=None, help="comma-separated targets")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-sample", action="store_true")
    ap.add_argument("--batch", type=int, default=None, help="compile this one batch per device (no fitting)")
    ap.add_argument("--stages", default="2,3")
    args = ap.parse_args(argv)

    from janusflow_jax import plan
    from janusflow_jax.training.config import load_config

    os.makedirs(args.out, exist_ok=True)
    res_path = os.path.join(args.out, "results.jsonl")
    only = set(args.only.split(",")) if args.only else None
    t0 = time.perf_counter()

    def log(m):
        print(m, file=sys.stderr, flush=True)

    def write(rec):
        with open(res_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def over():
        return time.perf_counter() - t0 > args.budget

    if not args.skip_train:
        for target, mesh, remat in TRAIN_ROWS:
            if only and target not in only:
                continue
            for stage in args.stages.split(","):
                if over():
                    write({"kind": "train", "target": target, "stage": stage, "skipped": "time budget"})
                    continue
                cfg = load_config(f"{HERE}/configs/stage{stage}.yaml",
                                  ["model.preset=janusflow-1.3b", f"model.remat={remat}"], validate=False)  # fmt: skip
                tg = plan.get_target(target)
                log(f"train stage {stage} on {target} mesh {mesh} remat {remat}")

                def make(b, cfg=cfg, tg=tg, mesh=mesh, remat=remat):
                    return plan.train_plan(cfg, tg, mesh=mesh, remat=remat, batch_per_device=b)

                best, tried = (
                    fit_one(make, args.batch, log) if args.batch else fit_batch(make, tg.hbm_gib * plan.GIB, 8, 16, log)
                )
                rec = {"kind": "train", "target": target, "stage": stage, "mesh": mesh, "remat": remat,
                       "tried": [(p.settings["batch_per_device"], p.fits, round(p.used_gib, 2)) for p in tried]}  # fmt: skip
                if tried and best is None:
                    rec.update(gib=round(tried[-1].used_gib, 2), hbm=tg.hbm_gib, error=tried[-1].error)
                if best is not None:
                    b = best.settings["batch_per_device"]
                    rec.update(batch_per_device=b, rows=best.settings["rows_per_device"],
                               global_batch=best.settings["global_batch"], gib=round(best.used_gib, 2),
                               hbm=tg.hbm_gib, mfu=round(100 * best.mfu, 1),
                               step_ms=round(best.times()["step"] * 1e3, 1),
                               cmd=train_cmd(stage, target, mesh, remat, b), last=plan.last_line(best))  # fmt: skip
                    print(plan.report(best), flush=True)
                write(rec)
    if not args.skip_sample:
        for target, preset, mesh in SAMPLE_ROWS:
            if only and target not in only:
                continue
            if over():
                write({"kind": "sample", "target": target, "preset": preset, "skipped": "time budget"})
                continue
            family, cfg, vae = plan.model_preset(preset)
            tg = plan.get_target(target)
            log(f"sample {preset} on {target} mesh {mesh}")

            def make(b, family=family, cfg=cfg, vae=vae, tg=tg, mesh=mesh):
                return plan.sample_plan(family, cfg, vae, tg, batch_per_device=b, mesh=mesh, dtype="bfloat16")

            best, tried = (
                fit_one(make, args.batch, log) if args.batch else fit_batch(make, tg.hbm_gib * plan.GIB, 4, 16, log)
            )
            rec = {"kind": "sample", "target": target, "preset": preset, "mesh": mesh,
                   "tried": [(p.settings["batch_per_device"], p.fits, round(p.used_gib, 2)) for p in tried]}  # fmt: skip
            if best is not None:
                b = best.settings["batch_per_device"]
                rec.update(batch_per_device=b, gib=round(best.used_gib, 2), hbm=tg.hbm_gib,
                           mfu=round(100 * best.mfu, 1), step_ms=round(best.times()["step"] * 1e3, 1),
                           cmd=(f"janusflow-sample generate --plan --target {target} --preset {preset} "
                                f"--dtype bfloat16 --mesh {mesh_arg(mesh)} --batch-per-device {b}"),
                           last=plan.last_line(best))  # fmt: skip
                print(plan.report(best), flush=True)
            write(rec)
    log(f"done in {time.perf_counter() - t0:.0f}s; results in {res_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
