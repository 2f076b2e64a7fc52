"""janusflow-export: a model of either family → the folders PyTorch users load.

    janusflow-export CHECKPOINT --to official|hf --out DIR [--dtype bfloat16|float32] [--max-shard-size 5GB]

CHECKPOINT: a janusflow-convert checkpoint, an official folder, a training run directory (its
export/), or "default" (the shipped model). `--to official`: the family's official folder
(config.json, model.safetensors or shards + index, tokenizer/processor files; JanusFlow also vae/).
`--to hf` (Janus only): transformers' JanusForConditionalGeneration folder. No torch; DIR appears
only when complete, and an existing DIR is refused.
"""

from __future__ import annotations

import argparse
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="janusflow-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help='model folder, checkpoint, training run directory, or "default"')
    p.add_argument("--to", required=True, choices=("official", "hf"), help="layout to write")
    p.add_argument("--out", required=True, help="output folder (must not exist)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="stored tensor dtype")
    p.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors file before sharding (e.g. 5GB, 500MB, 2GiB)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from janusflow_jax import progress as progress_lib
    from janusflow_jax.export import ExportError, export

    t0 = time.time()
    bars = []

    def progress(total: int):
        bar = progress_lib.bar(total, "exporting", "tensors")
        bars.append(bar)

        def on_tensor(t) -> None:
            bar.set_postfix_str(t.name[-48:], refresh=False)
            bar.update(1)

        return on_tensor

    def close() -> None:
        for b in bars:
            b.close()

    try:
        s = export(args.checkpoint, args.out, to=args.to, dtype=args.dtype, max_shard_size=args.max_shard_size,
                   progress=progress)  # fmt: skip
    except (ExportError, OSError) as e:  # OSError: the disk, while writing (the partial folder is removed)
        close()
        print(f"janusflow-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close()
        print("janusflow-export: interrupted; nothing was written", file=sys.stderr)
        return 130
    close()
    shards = sum(f.endswith(".safetensors") for f in s.files)
    print(
        f"wrote {s.out} ({s.num_tensors} tensors, {s.total_bytes / 1e9:.3f} GB in {shards} safetensors file(s), "
        f"{time.time() - t0:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
