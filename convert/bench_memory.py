"""Peak memory of `janusflow-convert` and `janusflow_jax.load` on random checkpoints of real size.

    python -m convert.bench_memory --root /tmp/memtest [--models janusflow-1.3b,janus-pro-7b-st,janus-pro-7b-bin]
        [--code DIR] [--mesh fsdp=2,tensor=4] [--sample] [--keep]

Writes random checkpoints in the official formats, streamed (nothing whole in memory, no torch):
JanusFlow-1.3B (`model.safetensors`, bfloat16) + SDXL-VAE (`vae/diffusion_pytorch_model.safetensors`,
float32); Janus-Pro-7B as two bfloat16 safetensors shards with `model.safetensors.index.json`, and
as two torch-zip shards `pytorch_model-0000N-of-00002.bin` with `pytorch_model.bin.index.json`. Keys,
shapes, dtypes and configs are those of the real checkpoints (`tests/fixtures/full-size/*.json`).
Then, each in its own child process: a baseline (python + imports + JAX on 8 CPU devices), the
conversion, and the load onto an 8-device mesh; each child reports its own peak resident memory
(VmHWM of /proc/self/status: the high-water mark of that process alone, unlike RUSAGE_CHILDREN,
which is the maximum over all children and, after a vfork, can inherit the parent's). `--code DIR`
runs the children against another copy of the package (e.g. `git archive HEAD` unpacked) for a
before/after table. `--sample` also loads Janus-Pro-7B on one CPU device in bfloat16, answers a
question (a few tokens) and draws the first 16 image codes: path, shapes and memory only (random
weights)."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import time
import zipfile

import ml_dtypes
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
FULL = REPO / "tests" / "fixtures" / "full-size"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "preprocessor_config.json",
)
_DT = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
_ST_NAME = {"bfloat16": "BF16", "float32": "F32", "float16": "F16"}
_STORAGE = {"bfloat16": "BFloat16Storage", "float32": "FloatStorage", "float16": "HalfStorage"}


# --- random tensors, written one at a time ----------------------------------------------------


def random_tensor(rng: np.random.Generator, shape, dtype: str) -> np.ndarray:
    """Random finite values: bfloat16/float16 as random sign and mantissa with small exponents
    (|x| in [2^-8, 2^-6)), float32 as normal(0, 0.02)."""
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == "float32":
        return (rng.standard_normal(n, np.float32) * 0.02).reshape(shape)
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    if dtype == "bfloat16":
        bits = (bits & 0x80FF) | 0x3B80  # exponent 119 or 120
    else:
        bits = (bits & 0x87FF) | 0x1C00  # float16 exponent 7-8
    return bits.view(_DT[dtype]).reshape(shape)


def write_safetensors(path, tensors: list[tuple[str, tuple, str]], seed: int) -> int:
    """Stream `tensors` [(key, shape, dtype)] with random values into a safetensors file."""
    header, off = {}, 0
    for k, shape, dt in sorted(tensors):
        n = int(np.prod(shape, dtype=np.int64)) * _DT[dt].itemsize
        header[k] = {"dtype": _ST_NAME[dt], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for k, shape, dt in sorted(tensors):
            f.write(random_tensor(rng, shape, dt).tobytes())
    return off


def _pickle_state_dict(tensors: list[tuple[str, tuple, str]]) -> bytes:
    """data.pkl of a torch.save state dict (protocol 2, as torch writes it), built opcode by opcode."""

    def s(x: str) -> bytes:
        b = x.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def i(x: int) -> bytes:
        return b"J" + struct.pack("<i", x) if x < 2**31 else b"\x8a\x08" + struct.pack("<q", x)

    def t(*items) -> bytes:
        return b"(" + b"".join(items) + b"t"

    def g(mod, name) -> bytes:
        return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"

    od = g("collections", "OrderedDict") + b")R"
    out = [b"\x80\x02", od, b"("]
    for n, (k, shape, dt) in enumerate(tensors):
        numel = int(np.prod(shape, dtype=np.int64))
        stride, acc = [], 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        pid = t(s("storage"), g("torch", _STORAGE[dt]), s(str(n)), s("cpu"), i(numel)) + b"Q"
        args = t(pid, i(0), t(*map(i, shape)), t(*map(i, stride)), b"\x89", od)
        out.append(s(k) + g("torch._utils", "_rebuild_tensor_v2") + args + b"R")
    out.append(b"u.")
    return b"".join(out)


def write_torch_zip(path, tensors: list[tuple[str, tuple, str]], seed: int) -> int:
    """Stream `tensors` into a torch.save zip (archive/data.pkl + one stored member per storage)."""
    archive = pathlib.Path(path).stem
    rng = np.random.default_rng(seed)
    total = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        z.writestr(f"{archive}/data.pkl", _pickle_state_dict(tensors))
        z.writestr(f"{archive}/byteorder", "little")
        for n, (_, shape, dt) in enumerate(tensors):
            a = random_tensor(rng, shape, dt)
            with z.open(f"{archive}/data/{n}", "w", force_zip64=True) as m:
                m.write(a.tobytes())
            total += a.nbytes
        z.writestr(f"{archive}/version", "3\n")
    return total


def listing(name: str) -> tuple[dict, list[tuple[str, tuple, str]]]:
    d = json.loads((FULL / name).read_text())
    return d["config"], [(t["key"], tuple(t["shape"]), t["dtype"]) for t in d["tensors"]]


def _halves(tensors):
    """Two shards of about equal bytes, in key order (as transformers' sharding splits)."""
    tensors = sorted(tensors)
    sizes = np.cumsum([np.prod(s, dtype=np.int64) * _DT[dt].itemsize for _, s, dt in tensors])
    cut = int(np.searchsorted(sizes, sizes[-1] / 2)) + 1
    return [tensors[:cut], tensors[cut:]]


def write_folder(out: pathlib.Path, config: dict, tensors, *, layout: str, tokenizer_dir, seed: int = 0) -> int:
    """An official-layout folder: config.json, tokenizer/processor files, and the weights in `layout`
    ("safetensors", "safetensors-2" sharded, "bin-2" sharded torch zips). Returns the weight bytes."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in TOKENIZER_FILES:
        if (pathlib.Path(tokenizer_dir) / f).is_file():
            shutil.copy(pathlib.Path(tokenizer_dir) / f, out / f)
    # The tiny fixture's processor files, with the real model's image size and placeholder count
    # (SigLIP-L/16 at 384 px: 24 × 24 = 576 image tokens).
    vision = (config.get("vision_config") or config.get("vision_und_enc_config") or {}).get("params", {})
    size = int(vision.get("image_size", 384))
    for f, field, value in (("preprocessor_config.json", "image_size", size),
                            ("processor_config.json", "num_image_tokens", (size // 16) ** 2)):  # fmt: skip
        if (out / f).is_file():
            d = json.loads((out / f).read_text())
            d[field] = value
            (out / f).write_text(json.dumps(d, indent=2))
    if layout == "safetensors":
        return write_safetensors(out / "model.safetensors", tensors, seed)
    shards, total, wmap = _halves(tensors), 0, {}
    for n, part in enumerate(shards, 1):
        if layout == "safetensors-2":
            name = f"model-{n:05d}-of-00002.safetensors"
            total += write_safetensors(out / name, part, seed + n)
        else:
            name = f"pytorch_model-{n:05d}-of-00002.bin"
            total += write_torch_zip(out / name, part, seed + n)
        wmap.update({k: name for k, _, _ in part})
    index = "model.safetensors.index.json" if layout == "safetensors-2" else "pytorch_model.bin.index.json"
    (out / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wmap}))
    return total


def write_model(kind: str, root: pathlib.Path) -> tuple[pathlib.Path, int]:
    """One of the benchmark's random full-size folders (written once, reused)."""
    d = root / kind
    done = d / "bench_bytes.json"
    if done.is_file():
        return d, json.loads(done.read_text())["bytes"]
    if kind == "janusflow-1.3b":
        cfg, tensors = listing("janusflow-1.3b-state-dict.json")
        n = write_folder(d, cfg, tensors, layout="safetensors", tokenizer_dir=REPO / "tests/fixtures/janusflow-tiny")
        vcfg, vt = listing("sdxl-vae-state-dict.json")
        (d / "vae").mkdir()
        (d / "vae" / "config.json").write_text(json.dumps(vcfg, indent=2))
        n += write_safetensors(d / "vae" / "diffusion_pytorch_model.safetensors", vt, 7)
    else:
        cfg, tensors = listing("janus-pro-7b-state-dict.json")
        layout = {"janus-pro-7b-st": "safetensors-2", "janus-pro-7b-bin": "bin-2"}[kind]
        n = write_folder(d, cfg, tensors, layout=layout, tokenizer_dir=REPO / "tests/fixtures/janus-pro-tiny")
    done.write_text(json.dumps({"bytes": n}))
    return d, n


# --- the measured children ---------------------------------------------------------------------

CHILD_PRELUDE = """
import json, os, sys, time
def _hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
import jax, orbax.checkpoint, janusflow_jax
from janusflow_jax import sharding
jax.devices()
"""

CHILDREN = {
    "baseline": "out = {}",
    "convert": """
from convert.torch_to_orbax import main
t0 = time.time()
rc = main([SRC, '--out', DST, '--dtype', 'bfloat16'])
out = {'rc': rc, 'wall_s': time.time() - t0}
""",
    "load": """
t0 = time.time()
mesh = sharding.make_mesh(MESH)
m = janusflow_jax.load(DST, dtype='bfloat16', mesh=mesh)
trees = [m.params] + ([m.vae_params] if hasattr(m, 'vae_params') else [])
leaves = [x for t in trees for x in jax.tree.leaves(t)]
jax.block_until_ready(leaves)
out = {'wall_s': time.time() - t0, 'param_bytes': sum(int(x.nbytes) for x in leaves),
       'device_bytes': sum(int(s.data.nbytes) for x in leaves for s in x.addressable_shards)}
""",
    "sample": """
import numpy as np
t0 = time.time()
m = janusflow_jax.load(DST, dtype='bfloat16')
jax.block_until_ready(jax.tree.leaves(m.params))
out = {'load_s': time.time() - t0}
t0 = time.time()
img = np.full((384, 384, 3), 128, np.uint8)
out['answer'] = m.answer([img], ['What is shown here?'], max_new_tokens=4)[0]
out['answer_s'] = time.time() - t0
proc = m.processor
ids = np.asarray(proc.encode(proc.generation_prompt('a lighthouse at sunset')), np.int32)
t0 = time.time()
codes = np.asarray(m.sample_image_tokens(ids, cfg_weight=5.0, num_tokens=16, seed=0))
out.update(codes_s=time.time() - t0, codes_shape=list(codes.shape), codes=codes[0, :16].tolist())
""",
}


def run_child(what: str, *, src="", dst="", mesh=None, code=None, devices: int = 8) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(code or REPO))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    body = f"SRC, DST, MESH = {src!r}, {dst!r}, {mesh!r}\n" + CHILD_PRELUDE + CHILDREN[what]
    body += "\nout['peak_rss'] = _hwm()\nprint('BENCH_JSON ' + json.dumps(out), flush=True)\n"
    r = subprocess.run([sys.executable, "-c", body], env=env, cwd=str(code or REPO), capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if r.returncode or not lines:
        raise RuntimeError(f"{what} child failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH_JSON ") :])


def _parse_mesh(s: str) -> dict:
    out = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in filter(None, s.split(",")):
        k, v = part.split("=")
        out[k.strip()] = int(v)
    return out


def measure(kind: str, src: pathlib.Path, nbytes: int, root: pathlib.Path, mesh: dict, code=None) -> dict:
    dst = root / f"{kind}.ckpt"
    shutil.rmtree(dst, ignore_errors=True)
    base = run_child("baseline", code=code)["peak_rss"]
    conv = run_child("convert", src=str(src), dst=str(dst), code=code)
    if conv["rc"] != 0:
        raise RuntimeError(f"conversion of {src} failed")
    load = run_child("load", dst=str(dst), mesh=mesh, code=code)
    return {
        "model": kind,
        "bytes": nbytes,
        "baseline": base,
        "convert_peak": conv["peak_rss"],
        "convert_s": conv["wall_s"],
        "load_peak": load["peak_rss"],
        "load_s": load["wall_s"],
        "param_bytes": load["param_bytes"],
        "device_bytes": load["device_bytes"],
        "dst": str(dst),
    }


def table(rows: list[dict]) -> str:
    gb = 1e9
    out = [
        "| checkpoint | bytes | convert peak (above baseline) | × bytes | convert wall, MB/s | load peak (above baseline) | × params | load wall, MB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        c, lo = r["convert_peak"] - r["baseline"], r["load_peak"] - r["baseline"]
        out.append(
            f"| {r['model']} | {r['bytes'] / gb:.2f} GB | {r['convert_peak'] / gb:.2f} GB ({c / gb:.2f}) | "
            f"{c / r['bytes']:.2f} | {r['convert_s']:.0f} s, {r['bytes'] / r['convert_s'] / 1e6:.0f} | "
            f"{r['load_peak'] / gb:.2f} GB ({lo / gb:.2f}) | {lo / r['param_bytes']:.2f} | "
            f"{r['load_s']:.0f} s, {r['param_bytes'] / r['load_s'] / 1e6:.0f} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/tmp/memtest", help="folder for the random checkpoints and outputs")
    p.add_argument("--models", default="janusflow-1.3b,janus-pro-7b-st,janus-pro-7b-bin")
    p.add_argument("--code", default=None, help="run the children against this copy of the package")
    p.add_argument("--mesh", default="fsdp=2,tensor=4", help="mesh of the load (8 CPU devices)")
    p.add_argument("--sample", action="store_true", help="also answer + 16 image codes with Janus-Pro-7B")
    p.add_argument("--keep", action="store_true", help="keep the multi-GB files")
    args = p.parse_args(argv)
    root = pathlib.Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in filter(None, args.models.split(",")):
        t0 = time.time()
        src, n = write_model(kind, root)
        print(f"{kind}: {n / 1e9:.2f} GB written in {time.time() - t0:.0f} s", flush=True)
        rows.append(measure(kind, src, n, root, _parse_mesh(args.mesh), code=args.code))
        print(json.dumps(rows[-1]), flush=True)
    if args.sample:
        ckpt = next((r["dst"] for r in rows if r["model"].startswith("janus-pro-7b")), None)
        if ckpt is None:
            raise SystemExit("--sample needs a Janus-Pro-7B model in --models")
        s = run_child("sample", dst=ckpt, devices=1)
        print(json.dumps(s), flush=True)
        print(
            f"\nJanus-Pro-7B bf16 on 1 CPU device: load {s['load_s']:.0f} s, answer (4 tokens) {s['answer_s']:.0f} s, "
            f"16 image codes {s['codes_s']:.0f} s, peak RSS {s['peak_rss'] / 1e9:.2f} GB"
        )
    print()
    print(table(rows))
    if not args.keep:
        for kind in filter(None, args.models.split(",")):
            shutil.rmtree(root / kind, ignore_errors=True)
            shutil.rmtree(root / f"{kind}.ckpt", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
