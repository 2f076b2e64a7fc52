"""janusflow-train: the three-stage JanusFlow recipe (and fine-tuning) as one resumable, sharded run.

    janusflow-train --config train/configs/stage1.yaml [key.sub=value ...]
                    [--coordinator HOST:PORT --num-processes N --process-id I]

The YAML presets in train/configs/ hold every setting; `key.sub=value` overrides any of them (values
are YAML: 3e-4, true, [a, b]); unknown keys are errors. Running the same command again resumes from
the newest complete checkpoint in run.out_dir.

    janusflow-train --config train/configs/stage2.yaml --plan --target v5e-256 [--plan-search] [model.preset=janusflow-1.3b]

`--plan` compiles the real train step ahead of time for a TPU/GPU target on this machine (no weights,
no data; janusflow_jax/plan.py) and reports per-device memory, collectives, FLOPs and a roofline
estimate; `--plan-search` also tries meshes, remat policies and per-device batches. Exit status:
0 fits, 3 does not fit, 2 error.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="janusflow-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="YAML preset (train/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4")
    p.add_argument("--coordinator", default=None, help="multi-process: address of process 0 (host:port)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--plan", action="store_true", help="compile ahead of time for --target and report; no training")
    p.add_argument("--target", default=None, help="plan target (janusflow_jax.plan.TARGETS: v5e-8, v5p-128, 8xH100, …)")
    p.add_argument("--plan-search", action="store_true", help="with --plan: try meshes × remat × batch per device")
    p.add_argument("--batch-per-device", type=int, default=None, metavar="N",
                   help="with --plan: N rows per batch shard in the mix's proportions (default: data.mix / shards)")
    p.add_argument("--search-budget", type=float, default=None, metavar="S", help="--plan-search: stop after S seconds")
    return p


def _plan(cfg, args) -> int:
    from janusflow_jax import plan

    if args.target is None:
        raise plan.PlanError(f"--plan needs --target (one of {', '.join(plan.TARGETS)})")
    target = plan.get_target(args.target)
    if args.plan_search:
        plans = plan.train_plan_search(cfg, target, log=lambda m: print(m, file=sys.stderr, flush=True),
                                       budget_s=args.search_budget)  # fmt: skip
        print(plan.search_table(plans))
        ok = sorted((q for q in plans if q.fits), key=lambda q: -q.mfu)
        best = ok[0] if ok else (plans[-1] if plans else plan.train_plan(cfg, target))
        print(plan.report(best))
        return 0 if best.fits else 3
    p = plan.train_plan(cfg, target, batch_per_device=args.batch_per_device)
    print(plan.report(p))
    return 0 if p.fits else 3


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from janusflow_jax.config import ConfigError
    from janusflow_jax.data import DataError
    from janusflow_jax.model import LoadError
    from janusflow_jax.processing import ProcessorError
    from janusflow_jax.training.config import load_config
    from janusflow_jax.training.state import TrainConfigError
    from janusflow_jax.training.trainer import TrainError, Trainer, maybe_init_distributed

    from janusflow_jax.plan import PlanError

    try:
        if args.plan:  # no weights or data: the model source need not exist beyond its config
            return _plan(load_config(args.config, args.overrides, validate=False), args)
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            return 0
        maybe_init_distributed(args.coordinator, args.num_processes, args.process_id)
        trainer = Trainer(cfg)
        try:
            last = trainer.run()
        finally:
            trainer.close()
        if last:
            print(f"janusflow-train: finished at step {last['step']}, loss {last['loss']:.4f}; outputs in {trainer.out_dir}")
    except (TrainConfigError, ConfigError, DataError, LoadError, ProcessorError, TrainError, PlanError, OSError,
            ValueError) as e:  # fmt: skip
        print(f"janusflow-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("janusflow-train: interrupted (resume by running the same command)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
