"""janusflow-train: the three-stage JanusFlow recipe (and fine-tuning) as one resumable, sharded run.

    janusflow-train --config train/configs/stage1.yaml [key.sub=value ...]
                    [--coordinator HOST:PORT --num-processes N --process-id I]

The YAML presets in train/configs/ hold every setting; `key.sub=value` overrides any of them (values
are YAML: 3e-4, true, [a, b]); unknown keys are errors. Running the same command again resumes from
the newest complete checkpoint in run.out_dir.
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from janusflow_jax.config import ConfigError
    from janusflow_jax.data import DataError
    from janusflow_jax.model import LoadError
    from janusflow_jax.processing import ProcessorError
    from janusflow_jax.training.config import load_config
    from janusflow_jax.training.state import TrainConfigError
    from janusflow_jax.training.trainer import TrainError, Trainer, maybe_init_distributed

    try:
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
    except (TrainConfigError, ConfigError, DataError, LoadError, ProcessorError, TrainError, OSError, ValueError) as e:
        print(f"janusflow-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("janusflow-train: interrupted (resume by running the same command)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
