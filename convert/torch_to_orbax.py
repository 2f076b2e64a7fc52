"""janusflow-convert: official JanusFlow safetensors (+ diffusers VAE) → params-only Orbax checkpoint.

    janusflow-convert MODEL_DIR [--vae VAE_DIR] --out OUT_DIR [--dtype bfloat16|float32] [--overwrite]
    janusflow-convert CHECKPOINT --out OUT_DIR --dtype bfloat16     (re-save a janusflow-jax checkpoint)

No torch, no pickles: tensors are read one at a time from .safetensors and mapped through the
declarative table in janusflow_jax.weights. OUT_DIR appears only when complete.
"""

from __future__ import annotations

import argparse
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="janusflow-convert", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "model_dir", help="official JanusFlow folder (config.json + model.safetensors), or a janusflow-jax checkpoint"
    )
    p.add_argument(
        "--vae", dest="vae_dir", default=None, help="diffusers AutoencoderKL folder (default: MODEL_DIR/vae)"
    )
    p.add_argument("--out", dest="out_dir", required=True, help="output checkpoint folder (must not exist)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="stored parameter dtype")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from janusflow_jax.convert import ConvertError, convert

    t0 = time.time()
    count = [0]

    def progress(key: str) -> None:
        count[0] += 1
        if count[0] % 25 == 0 or count[0] == 1:
            print(
                f"\r  converted {count[0]} tensors ({time.time() - t0:.1f}s) {key[:60]:<60}",
                end="",
                file=sys.stderr,
                flush=True,
            )

    try:
        out = convert(
            args.model_dir,
            args.out_dir,
            vae_dir=args.vae_dir,
            dtype=args.dtype,
            overwrite=args.overwrite,
            progress=progress,
        )
    except ConvertError as e:
        print(file=sys.stderr)
        print(f"janusflow-convert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\njanusflow-convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(file=sys.stderr)
    print(f"wrote {out} ({count[0]} tensors converted, {time.time() - t0:.1f}s)" if count[0] else f"wrote {out} ({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
