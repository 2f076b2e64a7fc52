"""janusflow-convert: official JanusFlow / Janus weights (+ diffusers VAE) → params-only Orbax checkpoint.

    janusflow-convert MODEL_DIR [--vae VAE_DIR] --out OUT_DIR [--dtype bfloat16|float32] [--overwrite]
    janusflow-convert CHECKPOINT --out OUT_DIR --dtype bfloat16     (re-save a janusflow-jax checkpoint)

No torch, nothing executed: single or sharded safetensors and torch pickles (`pytorch_model.bin`,
sharded with an index; read by an allow-list unpickler) are read one tensor at a time, mapped
through the declarative tables of janusflow_jax.weights and streamed into the Orbax arrays (peak
memory well under the checkpoint's size). OUT_DIR appears only when complete.
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
    from janusflow_jax import progress as progress_lib
    from janusflow_jax.convert import ConvertError, convert, count_tensors

    t0 = time.time()
    bar = None

    def progress(key: str) -> None:
        nonlocal bar
        if bar is None:  # on the first tensor: configs and headers have been read by then
            bar = progress_lib.bar(count_tensors(args.model_dir, args.vae_dir), "converting", "tensors")
        bar.set_postfix_str(key[-48:], refresh=False)
        bar.update(1)

    def close_bar() -> int:
        if bar is None:
            return 0
        bar.close()
        return bar.n

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
        close_bar()
        print(f"janusflow-convert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close_bar()
        print("janusflow-convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    n = close_bar()
    took = f"{time.time() - t0:.1f}s"
    print(f"wrote {out} ({n} tensors converted, {took})" if n else f"wrote {out} ({took})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
