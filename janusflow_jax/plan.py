"""Ahead-of-time plans: compile the real train step or generation program for a TPU / GPU target on
this (CPU) machine, and report what it would use and cost there — before booking the machine.

    janusflow-train --config train/configs/stage2.yaml --plan --target v5e-256 [--plan-search]
    janusflow-sample generate --plan --target 8xH100 --preset janus-pro-7b --batch-per-device 8

A target names a topology description (`jax.experimental.topologies.get_topology_desc`: compile-only
devices, no hardware) and the chip's published peaks, all in `TARGETS`. The program is the one a run
executes (`training.step.train_step` with the run's mesh, shardings, dtype, remat and donation; the
jitted generation functions of `model.py` / `janus/model.py`), lowered on abstract inputs
(`ShapeDtypeStruct`s with shardings: no weights, nothing allocated) and compiled by the target's own
compiler (libtpu / the CUDA plugin). What is read back:
  * per-device bytes: parameters, optimizer state, EMA, batch (from the shardings), temporaries and
    the total (the compiler's `memory_analysis`: arguments + outputs − aliased + temporaries);
    a program over the chip's HBM fails at compile time on TPU (RESOURCE_EXHAUSTED), reported here
    as "does not fit" with the compiler's numbers; on GPU the total is compared with the HBM;
  * collectives by kind from the compiled HLO text, bytes per step (loop bodies × trip count);
  * FLOPs: XLA's cost analysis of the compiled program beside `janusflow_jax.flops`;
  * an ESTIMATE of step time and MFU from the peaks: compute = HLO FLOPs / peak, memory = HLO bytes
    accessed / HBM bandwidth, collectives = bytes moved / ICI bandwidth; step ≈ the largest of the
    max(compute, memory) + collectives (collectives not overlapped) — a roofline, not a measurement.

Nothing here changes the default backend: the topology devices are compile-only, and the CPU stays
`jax.devices()` (tests run with JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

GIB = 1024**3

__all__ = [
    "LAST_LINE_RE",
    "TARGETS",
    "Plan",
    "PlanError",
    "Target",
    "get_target",
    "last_line",
    "model_preset",
    "parse_collectives",
    "sample_plan",
    "target_devices",
    "train_plan",
    "train_plan_search",
]


class PlanError(ValueError):
    """A plan that cannot be made (unknown target, no architecture, impossible mesh, …)."""


# --- targets: ONE table of topologies and published per-chip peaks --------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # "tpu" | "cuda"
    topology: str  # TPU: get_topology_desc topology_name; CUDA: "hosts x ... x gpus" string
    chips: int
    chips_per_host: tuple[int, int, int] | None  # TPU host bounds (None: CUDA)
    num_slices: int
    bf16_tflops: float  # dense bf16 peak per chip
    hbm_gib: float  # HBM per chip
    hbm_gbs: float  # HBM bandwidth per chip, GB/s
    ici_gbs: float  # interconnect bandwidth per chip, GB/s (ICI; NVLink for GPUs)
    gpu_spec: str | None = None  # key of GPU_SPECS (CUDA targets)

    @property
    def kind(self) -> str:
        return self.name.split("-")[0] if self.platform == "tpu" else self.name.split("x", 1)[1]


_V5E = dict(bf16_tflops=197.0, hbm_gib=16.0, hbm_gbs=819.0, ici_gbs=200.0)  # ICI 1600 Gbit/s
_V5P = dict(bf16_tflops=459.0, hbm_gib=95.0, hbm_gbs=2765.0, ici_gbs=600.0)  # ICI 4800 Gbit/s
_V6E = dict(bf16_tflops=918.0, hbm_gib=32.0, hbm_gbs=1640.0, ici_gbs=448.0)  # ICI 3584 Gbit/s
_H100 = dict(bf16_tflops=989.0, hbm_gib=79.1, hbm_gbs=3352.0, ici_gbs=900.0, gpu_spec="h100_sxm")  # NVLink 4
_H200 = dict(bf16_tflops=989.0, hbm_gib=139.8, hbm_gbs=4800.0, ici_gbs=900.0, gpu_spec="h200_sxm")

# name → topology + peaks. MaxText's naming: v5p-N counts TensorCores (2 per chip), v5e/v6e-N chips.
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("v5e-4", "tpu", "v5e:2x2", 4, (2, 2, 1), 1, **_V5E),
        Target("v5e-8", "tpu", "v5e:2x4", 8, (2, 4, 1), 1, **_V5E),
        Target("v5e-256", "tpu", "v5e:16x16", 256, (2, 2, 1), 1, **_V5E),
        Target("2xv5e-256", "tpu", "v5e:16x16", 512, (2, 2, 1), 2, **_V5E),
        Target("v5p-8", "tpu", "v5:2x2x1", 4, (2, 2, 1), 1, **_V5P),
        Target("v5p-128", "tpu", "v5:4x4x4", 64, (2, 2, 1), 1, **_V5P),
        Target("v5p-512", "tpu", "v5:4x8x8", 256, (2, 2, 1), 1, **_V5P),
        Target("v6e-8", "tpu", "v6e:2x4", 8, (2, 4, 1), 1, **_V6E),
        Target("v6e-256", "tpu", "v6e:16x16", 256, (2, 2, 1), 1, **_V6E),
        Target("1xH100", "cuda", "1x1x1", 1, None, 1, **_H100),
        Target("8xH100", "cuda", "1x1x8", 8, None, 1, **_H100),
        Target("16xH100", "cuda", "1x2x8", 16, None, 1, **_H100),
        Target("8xH200", "cuda", "1x1x8", 8, None, 1, **_H200),
    )
}

# XLA GPU target configs (GpuTargetConfigProto text; the device facts XLA's own gpu_specs list)
_GPU_INFO = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {cores}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bw}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {mem}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 3 }}
device_description_str: "{name}"
"""
GPU_SPECS = {
    "h100_sxm": _GPU_INFO.format(cores=132, bw=3352320000000, mem=84978434048, name="NVIDIA H100 80GB HBM3"),
    "h200_sxm": _GPU_INFO.format(cores=132, bw=4800000000000, mem=150121545728, name="NVIDIA H200"),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise PlanError(f"unknown target {name!r}; one of {', '.join(TARGETS)}")
    return TARGETS[name]


@functools.cache
def target_devices(name: str) -> tuple:
    """Compile-only devices of the target's topology (no hardware needed)."""
    from jax.experimental import topologies

    t = get_target(name)
    # compile-only use: let several processes (tests, other plans) load libtpu side by side
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        if t.platform == "tpu":
            topo = topologies.get_topology_desc(
                platform="tpu",
                topology_name=t.topology,
                chip_config_name="default",
                chips_per_host_bounds=t.chips_per_host,
                num_slices=t.num_slices,
            )
        else:
            topo = topologies.get_topology_desc(
                platform="cuda", target_config=GPU_SPECS[t.gpu_spec], topology=t.topology
            )
    except Exception as e:  # a missing plugin (libtpu / jax-cuda12-plugin) or an unknown topology
        hint = "libtpu (pip install 'jax[tpu]')" if t.platform == "tpu" else "jax-cuda12-plugin + jax-cuda12-pjrt"
        raise PlanError(f"target {name}: no topology description ({type(e).__name__}: {e}); needs {hint}") from None
    devices = tuple(topo.devices)
    if len(devices) != t.chips:
        raise PlanError(f"target {name}: topology {t.topology} has {len(devices)} devices, the table says {t.chips}")
    return devices


def target_mesh(target: Target, shape: dict) -> jax.sharding.Mesh:
    """The ("data", "fsdp", "tensor") mesh over the target's devices (each mesh axis a product of
    physical axes; several slices: the data axis spans them)."""
    from jax.sharding import AxisType

    from janusflow_jax.sharding import MESH_AXES, make_mesh

    devices = target_devices(target.name)
    if target.num_slices == 1:
        try:
            return make_mesh(shape, devices)
        except ValueError as e:
            raise PlanError(f"mesh {shape} on {target.name}: {e}") from None
    from jax.experimental import mesh_utils

    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    n = len(devices)
    if -1 in sizes:
        sizes[sizes.index(-1)] = n // math.prod(s for s in sizes if s != -1)
    s = target.num_slices
    if math.prod(sizes) != n or sizes[0] % s:
        raise PlanError(f"mesh {dict(zip(MESH_AXES, sizes))} on {target.name}: data must be a multiple of {s} slices")
    arr = mesh_utils.create_hybrid_device_mesh([sizes[0] // s, sizes[1], sizes[2]], [s, 1, 1], devices)
    return jax.sharding.Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


# --- architectures without weights --------------------------------------------------------------


def model_preset(name: str):
    """("janusflow", JanusFlowConfig, VaeConfig) or ("janus", JanusConfig, None) for a preset name."""
    from janusflow_jax import config as C
    from janusflow_jax.janus import config as J

    if name == "janusflow-1.3b":
        return "janusflow", C.JANUSFLOW_1_3B, C.SDXL_VAE
    if name in J.PRESETS:
        return "janus", J.PRESETS[name], None
    raise PlanError(f"unknown model preset {name!r}; one of janusflow-1.3b, {', '.join(J.PRESETS)}")


def model_from_folder(path: str, vae_path: str | None = None):
    """(family, cfg, vae_cfg) from a checkpoint's metadata or an official folder's config.json —
    the architecture only, no weights are read."""
    from janusflow_jax import checkpoint
    from janusflow_jax import config as C
    from janusflow_jax.janus import config as J
    from janusflow_jax.model import detect_family, shipped_path

    path = shipped_path(path)
    if not os.path.isdir(path):
        raise PlanError(f"{path}: no such model folder or checkpoint")
    if checkpoint.is_checkpoint(path) and checkpoint.read_metadata(path).get("kind") == "vae":  # a vae-task export
        return "janusflow", None, C.VaeConfig.from_diffusers(checkpoint.read_metadata(path)["vae_config"])
    family = detect_family(path)
    if checkpoint.is_checkpoint(path):
        meta = checkpoint.read_metadata(path)
        if family == "janus":
            return family, J.from_official_json(meta["config"], gen_image_size=meta.get("gen_image_size")), None
        return family, C.from_official_json(meta["config"]), C.VaeConfig.from_diffusers(meta["vae_config"])
    d = C.read_json(os.path.join(path, "config.json"))
    if family == "janus":
        return family, (J.from_hf_json(d) if J.is_hf_janus_config(d) else J.from_official_json(d)), None
    vae_dir = vae_path or os.path.join(path, "vae")
    vae = C.load_vae_config(vae_dir) if os.path.isdir(vae_dir) else C.SDXL_VAE
    return family, C.from_official_json(d), vae


def train_architecture(m) -> tuple:
    """(JanusFlowConfig, VaeConfig) of a TrainConfig's `model` section without reading weights:
    `preset`, else `config` (+ `vae_config` / `vae_from`), else `init_from`."""
    from janusflow_jax import config as C

    if m.preset:
        family, cfg, vae = model_preset(m.preset)
    elif m.config:
        family, cfg = "janusflow", C.from_official_json(C.read_json(m.config))
        vae = None
    elif m.init_from:
        family, cfg, vae = model_from_folder(m.init_from)
    else:
        raise PlanError("no architecture: give model.preset=janusflow-1.3b, model.config or model.init_from")
    if family != "janusflow":
        raise PlanError(f"model {m.preset or m.init_from}: a Janus model; train it with task: janus")
    if m.vae_config:
        vae = C.VaeConfig.from_diffusers(C.read_json(m.vae_config))
    elif m.vae_from:
        vae = (
            model_from_folder(m.vae_from)[2]
            if not os.path.isfile(os.path.join(m.vae_from, "config.json"))
            else (C.load_vae_config(m.vae_from))
        )
    return cfg, vae or C.SDXL_VAE


# --- reading a compiled program ------------------------------------------------------------------

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
                "s4": 1, "u4": 1}  # fmt: skip
_SHAPE_RE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e4m3fn|f8e5m2)\[([\d,]*)\]")
_COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_COMP_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")


def _shape_bytes(text: str) -> list[int]:
    out = []
    for dt, dims in _SHAPE_RE.findall(text):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        out.append(n * _DTYPE_BYTES.get(dt, 4))
    return out


def _group_size(rest: str, n_devices: int) -> int:
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", rest)
    if m:
        return max(1, len([x for x in m.group(1).split(",") if x]))
    m = re.search(r"replica_groups=\[([\d,]+)\]<=", rest)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)
    if m:
        sizes = dict(re.findall(r"'([\w]+)'=(\d+)", m.group(1)))
        used = re.findall(r"'([\w]+)'", m.group(2))
        return max(1, math.prod(int(sizes.get(a, 1)) for a in used))
    m = re.search(r"source_target_pairs=\{", rest)
    if m:
        return 2
    return n_devices


def _traffic(kind: str, nbytes: int, g: int) -> float:
    """Bytes one device sends for a ring collective of result size `nbytes` over a group of `g`."""
    if g <= 1:
        return 0.0
    if kind == "all-gather":
        return nbytes * (g - 1) / g
    if kind == "reduce-scatter":
        return nbytes * (g - 1)  # the result is 1/g of the reduced input
    if kind == "all-reduce":
        return 2.0 * nbytes * (g - 1) / g
    return float(nbytes)


def parse_collectives(hlo: str, n_devices: int) -> dict[str, dict[str, float]]:
    """Collectives of a compiled (per-device) HLO module by kind: {"count", "bytes", "traffic"} per
    step, each instruction weighted by how often it runs (the trip counts of enclosing while loops,
    from `known_trip_count` or the loop condition's `i < N`). Async pairs count once (the start);
    TPU fusions wrapping a collective (e.g. `calls=%all-reduce-scatter…`) count as that collective."""
    comps: dict[str, list[tuple[str, str, str]]] = {}
    entry = None
    cur = None
    for line in hlo.splitlines():
        m = _COMP_RE.match(line)
        if m:
            cur = m.group(2)
            comps[cur] = []
            if m.group(1):
                entry = cur
            continue
        if cur is None:
            continue
        if line.strip() == "}":
            cur = None
            continue
        mi = _INSTR_RE.match(line)
        if mi:
            comps[cur].append((mi.group(2), mi.group(3), mi.group(4)))
    if entry is None:
        return {}

    def trip(cond: str, rest: str) -> int:
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        if m:
            return int(m.group(1))
        consts = {}
        for line_shape, op, args in comps.get(cond, []):
            if op == "constant":
                mm = re.match(r"(-?\d+)\)", args)
                if mm:
                    consts[len(consts)] = int(mm.group(1))
        lt = [a for _, op, a in comps.get(cond, []) if op == "compare" and "direction=LT" in a]
        vals = [v for v in consts.values() if v > 0]
        return max(vals) if lt and vals else 1

    weight: dict[str, float] = {}
    fused: set[str] = set()

    def visit(name: str, w: float, depth: int = 0) -> None:
        if depth > 64 or name not in comps:
            return
        weight[name] = weight.get(name, 0.0) + w
        for shape, op, rest in comps[name]:
            if op == "while":
                body = re.search(r"body=%?([\w.\-]+)", rest)
                cond = re.search(r"condition=%?([\w.\-]+)", rest)
                if body:
                    visit(body.group(1), w * trip(cond.group(1) if cond else "", rest), depth + 1)
            elif op == "fusion":
                for c in re.findall(r"calls=%?([\w.\-]+)", rest):
                    fused.add(c)
            else:
                for c in re.findall(r"(?:calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)", rest):
                    if op in ("call", "conditional", "async-start") or op.endswith("-start"):
                        visit(c, w, depth + 1)
                m = re.search(r"branch_computations=\{([^}]*)\}", rest)
                if m:
                    for c in re.findall(r"%?([\w.\-]+)", m.group(1)):
                        visit(c, w, depth + 1)

    visit(entry, 1.0)
    out: dict[str, dict[str, float]] = {}

    def add(kind: str, shape: str, rest: str, w: float, pick_max: bool) -> None:
        sizes = _shape_bytes(shape)
        if not sizes:
            return
        # async starts return (operands…, results…): the result is the larger for a gather, the smaller for a scatter
        nbytes = (min(sizes) if kind == "reduce-scatter" else max(sizes)) if pick_max else sum(sizes)
        g = _group_size(rest, n_devices)
        d = out.setdefault(kind, {"count": 0.0, "bytes": 0.0, "traffic": 0.0})
        d["count"] += w
        d["bytes"] += w * nbytes
        d["traffic"] += w * _traffic(kind, nbytes, g)

    for name, w in weight.items():
        for shape, op, rest in comps[name]:
            base = op.removesuffix("-start")
            if base in _COLLECTIVES and not op.endswith("-done"):
                add(base, shape, rest, w, op.endswith("-start"))
            elif op == "fusion":
                called = " ".join(re.findall(r"calls=%?([\w.\-]+)", rest))
                for kind in ("all-reduce-scatter", "reduce-scatter", "all-gather", "all-reduce", "all-to-all"):
                    if kind in called:
                        add("reduce-scatter" if kind == "all-reduce-scatter" else kind, shape, rest, w, False)
                        break
    return out


def _cost(compiled) -> dict:
    """XLA's cost analysis of the compiled program (per device). The CUDA plugin returns none for
    compile-only devices; then the per-device HLO module is analysed with the CPU client's cost model."""
    try:
        ca = compiled.cost_analysis()
    except Exception:
        ca = None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if ca:
        return {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0)), "src": "XLA"}
    try:
        from jax._src import xla_bridge
        from jax._src.lib import _jax

        mods = compiled.runtime_executable().hlo_modules()
        ca = _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), mods[0])
        return {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0)),
                "src": "XLA (CPU cost model of the GPU HLO)"}  # fmt: skip
    except Exception:
        return {"flops": 0.0, "bytes": 0.0, "src": "unavailable"}


def _sds_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (its shard of each leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


_OOM_RES = (
    re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"),
    re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
)
_UNIT = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclasses.dataclass
class Plan:
    """What one compile reported (bytes per device; FLOPs per step)."""

    what: str  # "train stage 2" / "sample janusflow"
    target: Target
    mesh: dict
    settings: dict  # remat, dtype, rows per device, …
    fits: bool
    compiled: bool  # False: the compiler refused it (out of memory)
    bytes: dict  # params, opt_state, ema, batch, temp, total (per device)
    error: str = ""
    collectives: dict = dataclasses.field(default_factory=dict)
    hlo_flops: float = 0.0  # per step, all devices (cost analysis × devices)
    hlo_bytes: float = 0.0  # per device
    # per device: HBM traffic the program cannot avoid that the cost analysis misses — it counts a
    # while loop's body once, so a decode loop that reads every weight each step looks compute-bound
    min_hbm_bytes: float = 0.0
    cost_src: str = ""
    model_flops: float = 0.0  # analytic (flops.py), per step
    compile_s: float = 0.0
    notes: list = dataclasses.field(default_factory=list)
    hlo_text_size: int = 0

    @property
    def used_gib(self) -> float:
        return self.bytes.get("total", 0) / GIB

    def times(self) -> dict:
        t = self.target
        n = t.chips
        peak = t.bf16_tflops * 1e12
        # the compiled count can miss library calls (cuBLAS GEMMs on GPU): never below the model's
        compute = max(self.hlo_flops, self.model_flops) / n / peak
        hbm = max(self.hlo_bytes, self.min_hbm_bytes) / (t.hbm_gbs * 1e9)
        ici = sum(c["traffic"] for c in self.collectives.values()) / (t.ici_gbs * 1e9)
        # compute and HBM traffic overlap (fused kernels); collectives are counted as not overlapped
        step = max(compute, hbm) + ici
        return {"compute": compute, "hbm": hbm, "ici": ici, "step": step, "overlapped": max(compute, hbm, ici)}

    @property
    def mfu(self) -> float:
        if not self.fits:
            return 0.0
        step = self.times()["step"]
        if step <= 0:
            return 0.0
        return self.model_flops / step / (self.target.chips * self.target.bf16_tflops * 1e12)


def compile_plan(
    what: str,
    target: Target,
    mesh,
    lower: Callable[[], Any],
    known_bytes: dict,
    settings: dict,
    model_flops: float,
) -> Plan:
    """Lower and compile with the target's compiler; out-of-memory is a result, not an error."""
    t0 = time.perf_counter()
    shape = {k: int(v) for k, v in mesh.shape.items()}
    hbm = target.hbm_gib * GIB
    notes = []
    lowered = lower()  # a tracing error is the program's, not the compiler's: it propagates as raised
    try:
        try:
            compiled = lowered.compile()
        except Exception as e:
            # XLA:GPU's Triton GEMM tiler rejects some dot shapes (seen: Janus-Pro-7B's 703-token rows,
            # "Couldn't find output tile sizes that satisfy hlo"); those GEMMs then go to cuBLAS.
            if target.platform != "cuda" or "tile sizes" not in str(e):
                raise
            compiled = lowered.compile(compiler_options={"xla_gpu_enable_triton_gemm": False})
            notes.append("compiled with xla_gpu_enable_triton_gemm=false: with XLA's defaults the Triton GEMM "
                         f"tiler fails on this program ({str(e).strip().splitlines()[0][:160]})")  # fmt: skip
    except Exception as e:  # jax.errors.JaxRuntimeError (XlaRuntimeError) carries the compiler status
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg and "Ran out of memory" not in msg:
            first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
            raise PlanError(f"{what} on {target.name}: the compiler failed: {first[:300]}") from None
        need = None
        for rx in _OOM_RES:
            m = rx.search(msg)
            if m:
                need = float(m.group(1)) * _UNIT[m.group(2)]
                break
        b = dict(known_bytes)
        state = sum(v for k, v in known_bytes.items())
        if need is not None and _OOM_RES[0].search(msg):
            b["temp"] = int(need)
            b["total"] = int(need + state)
        else:
            b["total"] = int(need) if need is not None else int(state)
        first = msg.strip().splitlines()[0]
        return Plan(what, target, shape, settings, False, False, b, error=first[:400], model_flops=model_flops,
                    compile_s=time.perf_counter() - t0)  # fmt: skip
    ma = compiled.memory_analysis()
    b = dict(known_bytes)
    if ma is not None:
        b["temp"] = int(ma.temp_size_in_bytes)
        b["arguments"] = int(ma.argument_size_in_bytes)
        b["outputs"] = int(ma.output_size_in_bytes)
        b["aliased"] = int(ma.alias_size_in_bytes)
        b["code"] = int(getattr(ma, "generated_code_size_in_bytes", 0))
        b["total"] = b["arguments"] + b["outputs"] - b["aliased"] + b["temp"]
    else:
        b["total"] = sum(known_bytes.values())
    text = compiled.as_text() or ""
    cost = _cost(compiled)
    p = Plan(
        what,
        target,
        shape,
        settings,
        fits=b["total"] <= hbm,
        compiled=True,
        bytes=b,
        collectives=parse_collectives(text, target.chips),
        hlo_flops=cost["flops"] * target.chips,
        hlo_bytes=cost["bytes"],
        cost_src=cost["src"],
        model_flops=model_flops,
        compile_s=time.perf_counter() - t0,
        hlo_text_size=len(text),
    )
    p.notes += notes
    if not p.fits:
        p.error = f"compiled, but {b['total'] / GIB:.2f} GiB per device exceeds the {target.hbm_gib:g} GiB HBM"
    return p


# --- training ------------------------------------------------------------------------------------


def rows_per_device(mix, shards: int, accum: int = 1, batch: int | None = None) -> dict[str, int]:
    """Rows of each kind per batch shard. `batch=None`: the config's global mix over `shards`,
    rounded up; else `batch` rows per shard split in the mix's proportions (largest remainder,
    each kind the mix has at least one row)."""
    kinds = {k: getattr(mix, k) for k in ("gen", "und", "text") if getattr(mix, k) > 0}
    if batch is None:
        out = {k: -(-v // shards) for k, v in kinds.items()}
    else:
        if batch < len(kinds):
            raise PlanError(f"a batch of {batch} per device cannot hold the {len(kinds)} kinds of the mix")
        total = sum(kinds.values())
        raw = {k: batch * v / total for k, v in kinds.items()}
        out = {k: max(1, int(r)) for k, r in raw.items()}
        while sum(out.values()) < batch:
            k = max(raw, key=lambda k: raw[k] - out[k])
            out[k] += 1
        while sum(out.values()) > batch:
            k = max((k for k in out if out[k] > 1), key=lambda k: out[k] - raw[k])
            out[k] -= 1
    return {k: -(-v // accum) * accum for k, v in out.items()}


def train_plan(
    cfg,
    target: Target | str,
    *,
    mesh: dict | None = None,
    remat: str | None = None,
    batch_per_device: int | None = None,
) -> Plan:
    """Compile the real train step of TrainConfig `cfg` (any task) for `target` (mesh / remat /
    per-device batch default to the config's)."""
    from janusflow_jax.training.build import batch_shardings, build, jit_step
    from janusflow_jax.sharding import use_mesh

    target = get_target(target) if isinstance(target, str) else target
    remat = remat or cfg.model.remat
    mesh_shape = dict(mesh) if mesh is not None else dataclasses.asdict(cfg.mesh)
    jmesh = target_mesh(target, mesh_shape)
    shards = jmesh.shape["data"] * jmesh.shape["fsdp"]
    accum = cfg.optim.grad_accum
    rows_dev = rows_per_device(cfg.data.mix, shards, accum, batch_per_device)
    rows = {k: v * shards for k, v in rows_dev.items()}
    notes = []
    given = {k: getattr(cfg.data.mix, k) for k in rows}
    if batch_per_device is None and rows != given:
        notes.append(f"data.mix {given} is not divisible by {shards} batch shards: planned with {rows} (rounded up)")
    data_cfg = dataclasses.replace(
        cfg.data, mix=dataclasses.replace(cfg.data.mix, **{k: rows.get(k, 0) for k in ("gen", "und", "text")})
    )
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, remat=remat), data=data_cfg)
    try:
        built = build(cfg, jmesh, weights=False)  # architectures only: no weights are read
    except ValueError as e:
        raise PlanError(str(e)) from None
    lay = built.layout
    b = built.task.abstract_batch(data_cfg, rows)
    batch = jax.tree.map(lambda x, h: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=h), b, batch_shardings(b, jmesh))
    step = jit_step(built.step_fn, lay.state_shardings, jax.tree.map(lambda x: x.sharding, batch), jmesh)
    st = lay.abstract_state
    known = {"params": _sds_bytes(st["params"]), "opt_state": _sds_bytes(st["opt_state"]),
             "ema": _sds_bytes(st["ema"]), "batch": _sds_bytes(batch)}  # fmt: skip
    mflops = built.flops_per_step()

    def lower():
        with use_mesh(jmesh):
            return step.lower(st, batch)

    n_img = getattr(built.task, "num_gen_tokens", 0)
    settings = {"task": cfg.task, "stage": cfg.stage, "remat": remat, "dtype": cfg.model.dtype,
                "rows_per_device": rows_dev, "batch_per_device": sum(rows_dev.values()),
                "global_batch": sum(rows.values()), "grad_accum": accum, "params": lay.n_all,
                "trainable": lay.n_train,
                "seq": {"gen": cfg.data.gen_prompt_len + n_img, "und": cfg.data.und_len, "text": cfg.data.text_len}}  # fmt: skip
    p = compile_plan(f"train {cfg.task} stage {cfg.stage}", target, jmesh, lower, known, settings, mflops)
    p.notes += notes
    return p


def candidate_meshes(n: int, heads: int, fsdp_min: int = 1) -> list[dict]:
    """(data, fsdp, tensor) splits of n devices: tensor ∈ {1, 2, 4} dividing the head count, fsdp a
    power of two (the data axis takes the rest)."""
    out = []
    for tensor in (1, 2, 4):
        if heads % tensor or n % tensor:
            continue
        f = max(1, fsdp_min)
        while f * tensor <= n:
            if n % (f * tensor) == 0:
                out.append({"data": n // (f * tensor), "fsdp": f, "tensor": tensor})
            f *= 2
    return out


def train_plan_search(
    cfg,
    target: Target | str,
    *,
    meshes: Sequence[dict] | None = None,
    remats: Sequence[str] = ("none", "dots", "full"),
    batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    log: Callable[[str], None] = lambda m: None,
    budget_s: float | None = None,
) -> list[Plan]:
    """Compile over meshes × remat policies × per-device batches; returns every plan tried.

    Pruning (compiles at real size take minutes): a mesh whose parameters + optimizer state alone
    exceed the HBM is skipped; for each (mesh, remat) the batch grows until the first plan that does
    not fit (memory grows with the batch)."""
    target = get_target(target) if isinstance(target, str) else target
    if meshes is None:
        from janusflow_jax.training.tasks import janus

        arch = janus.architecture(cfg.model) if cfg.task == "janus" else train_architecture(cfg.model)[0]
        meshes = candidate_meshes(target.chips, arch.llm.num_attention_heads)
    kinds = sum(1 for k in ("gen", "und", "text") if getattr(cfg.data.mix, k) > 0)
    t_start = time.perf_counter()
    plans: list[Plan] = []
    for mesh in meshes:
        for remat in remats:
            for b in batches:
                if b < kinds:
                    continue
                if budget_s is not None and time.perf_counter() - t_start > budget_s:
                    log("search: time budget spent")
                    return plans
                p = train_plan(cfg, target, mesh=mesh, remat=remat, batch_per_device=b)
                plans.append(p)
                log(f"search: {_mesh_str(p.mesh)} remat {remat} batch/device {b}: "
                    f"{'fits' if p.fits else 'does not fit'} {p.used_gib:.2f} GiB, MFU {p.mfu:.1%} "
                    f"({p.compile_s:.0f}s)")  # fmt: skip
                state = p.bytes.get("params", 0) + p.bytes.get("opt_state", 0) + p.bytes.get("ema", 0)
                if state > target.hbm_gib * GIB:
                    break  # the state alone does not fit: no batch will; next remat/mesh the same
                if not p.fits:
                    break
            else:
                continue
    return plans


# --- sampling ------------------------------------------------------------------------------------


def sample_plan(
    family: str,
    cfg,
    vae_cfg,
    target: Target | str,
    *,
    batch_per_device: int = 1,
    mesh: dict | None = None,
    dtype: str = "bfloat16",
    prompt_len: int = 64,
    num_steps: int = 30,
    solver: str = "euler",
    decode_weights: str = "auto",
) -> Plan:
    """Compile the one-program generation of `family` (JanusFlow: CFG rows, prompt prefill, scanned
    ODE, VAE decode; Janus: prompt prefill, the token loop over every image code, VQ decode) for
    `batch_per_device` images per batch shard. `decode_weights` (Janus): how the token loop reads the
    layers' weights (`sampling.decode.DECODE_WEIGHTS`)."""
    from flax import nnx

    from janusflow_jax import flops
    from janusflow_jax.sharding import state_shardings, use_mesh

    target = get_target(target) if isinstance(target, str) else target
    jmesh = target_mesh(target, mesh or {"data": -1, "fsdp": 1, "tensor": 1})
    shards = jmesh.shape["data"] * jmesh.shape["fsdp"]
    B = batch_per_device * shards
    S = jax.ShapeDtypeStruct
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    rows = NamedSharding(jmesh, P(("data", "fsdp")))
    rep = NamedSharding(jmesh, P())
    ids = S((B, prompt_len), jnp.int32, sharding=rows)

    def abstract_params(abstract):
        gd, st = nnx.split(abstract, nnx.Param)
        sh = nnx.to_pure_dict(state_shardings(st, jmesh))
        return gd, jax.tree.map(lambda v, s: S(v.shape, v.dtype, sharding=s), nnx.to_pure_dict(st), sh)

    settings = {"family": family, "dtype": dtype, "batch_per_device": batch_per_device, "images": B,
                "prompt_len": prompt_len}  # fmt: skip
    if family == "janusflow":
        from janusflow_jax import model as M

        cfg = cfg.with_dtype(dtype)
        vae_cfg = dataclasses.replace(vae_cfg, dtype=dtype, param_dtype=dtype)
        jf_abs, vae_abs = M.abstract_modules(cfg, vae_cfg, jmesh)
        gd, params = abstract_params(jf_abs)
        vgd, vparams = abstract_params(vae_abs)
        side = cfg.latent_size(vae_cfg)
        z0 = S(
            (B, side, side, vae_cfg.latent_channels), jnp.float32, sharding=NamedSharding(jmesh, P(("data", "fsdp")))
        )
        evals = num_steps * (2 if solver == "heun" else 1)
        mflops = flops.llm_flops(cfg.llm, 2 * B, prompt_len - 1)
        mflops += evals * flops.gen_step_flops(cfg, 2 * B, side, prompt_len - 1, recompute=False)
        mflops += flops.vae_decode_flops(vae_cfg, side, B)
        settings.update(steps=num_steps, solver=solver)

        def lower():
            with use_mesh(jmesh):
                return M._generate_images.lower(gd, params, vgd, vparams, ids, ids, None, None, z0,
                                                S((), jnp.float32, sharding=rep), num_steps=num_steps,
                                                solver=solver, pad_id=0, progress=False)  # fmt: skip

        known = {"params": _sds_bytes(params) + _sds_bytes(vparams), "batch": _sds_bytes([ids, ids, z0])}
        llm_passes = evals + 1  # the prompt, then every velocity evaluation reads the LLM's weights
    elif family == "janus":
        from janusflow_jax.janus import model as JM
        from janusflow_jax.sampling.decode import Sampler, stream_choice

        cfg = cfg.with_dtype(dtype)
        gd, params = abstract_params(JM.abstract_module(cfg, jmesh))
        n = cfg.num_gen_tokens
        keys = jax.eval_shape(lambda: jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(B)))
        keys = S(keys.shape, keys.dtype, sharding=rows)
        opts = (n, Sampler(greedy=False, top_k=None, per_row_keys=True, nucleus=False), 0, False, 0,
                stream_choice(decode_weights))  # fmt: skip
        f32 = S((), jnp.float32, sharding=rep)
        mflops = flops.llm_flops(cfg.llm, 2 * B, prompt_len)
        # one token per step for every CFG row, the image head on the last position
        head = 2 * 2 * B * (cfg.llm.hidden_size * cfg.gen_head.image_token_embed
                            + cfg.gen_head.image_token_embed * cfg.gen_head.image_token_size)  # fmt: skip
        mflops += sum(flops.llm_flops(cfg.llm, 2 * B, 1, cached=prompt_len + i) for i in range(n - 1)) + n * head
        settings.update(tokens=n, decode_weights=decode_weights)

        def lower():
            with use_mesh(jmesh):
                return JM._generate_images.lower(gd, params, ids, ids, None, None, keys, f32, f32, f32, opts=opts)

        known = {"params": _sds_bytes(params), "batch": _sds_bytes([ids, ids])}
        llm_passes = n  # the prompt, then one decode step per code after the first
    else:
        raise PlanError(f"unknown family {family!r}")
    p = compile_plan(f"sample {family}", target, jmesh, lower, known, settings, mflops)
    # every LLM pass reads this device's shard of the weights (a lower bound: KV and activations not counted)
    p.min_hbm_bytes = float(known["params"]) * llm_passes
    return p


def sample_plan_max_batch(family, cfg, vae_cfg, target, *, start: int = 1, limit: int = 1024, log=lambda m: None,
                          **kw) -> tuple[Plan | None, list[Plan]]:  # fmt: skip
    """Double the batch per device from `start` until a plan does not fit; (largest fitting, all)."""
    best, tried = None, []
    b = start
    while b <= limit:
        p = sample_plan(family, cfg, vae_cfg, target, batch_per_device=b, **kw)
        tried.append(p)
        log(f"sample search: batch/device {b}: {'fits' if p.fits else 'does not fit'} {p.used_gib:.2f} GiB")
        if not p.fits:
            break
        best = p
        b *= 2
    return best, tried


# --- the report ----------------------------------------------------------------------------------

LAST_LINE_RE = re.compile(
    r"^plan: (fits|does not fit), ([\d.]+) GiB of ([\d.]+) GiB per chip, (\d+) chips, estimated MFU ([\d.]+)%$"
)


def last_line(p: Plan) -> str:
    return (f"plan: {'fits' if p.fits else 'does not fit'}, {p.used_gib:.2f} GiB of {p.target.hbm_gib:g} GiB per "
            f"chip, {p.target.chips} chips, estimated MFU {100 * p.mfu:.1f}%")  # fmt: skip


def _mesh_str(mesh: dict) -> str:
    return "x".join(f"{k}{v}" for k, v in mesh.items() if v > 1) or "1"


def _g(x: float) -> str:
    return f"{x / GIB:.3f} GiB"


def report(p: Plan) -> str:
    t = p.target
    lines = [
        f"target {t.name}: {t.chips} × {t.kind} ({t.platform} topology {t.topology}"
        f"{f', {t.num_slices} slices' if t.num_slices > 1 else ''}); peaks per chip: {t.bf16_tflops:g} TFLOP/s bf16, "
        f"{t.hbm_gib:g} GiB HBM at {t.hbm_gbs:g} GB/s, ICI {t.ici_gbs:g} GB/s",
        f"program: {p.what}; mesh {p.mesh}; " + ", ".join(f"{k} {v}" for k, v in p.settings.items()),
    ]
    lines += [f"note: {n}" for n in p.notes]
    b = p.bytes
    parts = [f"{k} {_g(b[k])}" for k in ("params", "opt_state", "ema", "batch", "temp") if k in b]
    lines.append("per device: " + ", ".join(parts) + f"; total {_g(b.get('total', 0))} of {t.hbm_gib:g} GiB HBM")
    lines.append("  bytes: " + ", ".join(f"{k}={b[k]}" for k in ("params", "opt_state", "ema", "batch", "temp", "total")
                                     if k in b))  # fmt: skip
    if "arguments" in b:
        lines.append(f"  compiler: arguments {_g(b['arguments'])} + outputs {_g(b['outputs'])} − aliased "
                     f"{_g(b['aliased'])} (donated state) + temporaries {_g(b['temp'])}")  # fmt: skip
    if not p.compiled:
        lines.append(f"compile: refused by the {t.platform} compiler: {p.error}")
    elif not p.fits:
        lines.append(f"compile: {p.error}")
    else:
        lines.append(f"compile: {p.compile_s:.1f}s on this machine")
    if p.compiled:
        if p.collectives:
            lines.append("collectives per step (per device, loop bodies × trip count):")
            for k, c in sorted(p.collectives.items()):
                lines.append(f"  {k:18s} {c['count']:8.0f} ops  {c['bytes'] / 1e9:10.3f} GB results  "
                             f"{c['traffic'] / 1e9:10.3f} GB sent")  # fmt: skip
        else:
            lines.append("collectives: none")
        ratio = p.hlo_flops / p.model_flops if p.model_flops else float("nan")
        sampling = p.what.startswith("sample")
        why = ("XLA's cost analysis counts each loop body once — the ODE or token loop, the layer scan — so "
               "the estimate uses the model count" if sampling else
               "the compiled count includes remat recompute, the frozen VAE/SigLIP and masked attention")  # fmt: skip
        lines.append(
            f"FLOPs per step: {p.hlo_flops / 1e12:.2f} TFLOP compiled ({p.cost_src} cost analysis × {t.chips} devices), "
            f"{p.model_flops / 1e12:.2f} TFLOP model (janusflow_jax.flops); ratio {ratio:.2f} ({why})"
        )
        tm = p.times()
        lines.append(
            f"roofline ESTIMATE per step: compute {tm['compute'] * 1e3:.1f} ms, HBM {tm['hbm'] * 1e3:.1f} ms "
            f"({max(p.hlo_bytes, p.min_hbm_bytes) / 1e9:.1f} GB per device"
            f"{', the weights read once per LLM pass' if p.min_hbm_bytes > p.hlo_bytes else ' accessed'}), "
            f"collectives {tm['ici'] * 1e3:.1f} ms → "
            f"step ≈ max(compute, HBM) + collectives = {tm['step'] * 1e3:.1f} ms "
            f"(≥ {tm['overlapped'] * 1e3:.1f} ms with every collective hidden); "
            f"estimated MFU {100 * p.mfu:.1f}% (model FLOPs / (chips × peak × step))"
        )
        if tm["compute"] >= max(tm["hbm"], tm["ici"]) and tm["ici"] < 0.01 * tm["step"]:
            lines.append("  compute-bound with next to no exposed collectives: the roofline is the chip's peak, so "
                         "this MFU is an upper bound, not a prediction (kernel efficiency, attention and the "
                         "convolutions decide the real figure)")  # fmt: skip
        if sampling and "images" in p.settings and tm["step"] > 0:
            per_chip = p.settings["images"] / tm["step"] / t.chips
            lines.append(f"  at this estimate: {p.settings['images']} images per {tm['step']:.2f} s program, "
                         f"{per_chip:.1f} images/s per chip (an upper bound)")  # fmt: skip
    lines.append(last_line(p))
    return "\n".join(lines)


def search_table(plans: Sequence[Plan]) -> str:
    """The plans that fit, best estimated MFU first."""
    ok = sorted((p for p in plans if p.fits), key=lambda p: -p.mfu)
    head = "| mesh | remat | batch/device (gen+und+text) | global batch | GiB per chip | est. step ms | est. MFU |"
    rows = [head, "|---|---|---|---|---|---|---|"]
    for p in ok:
        r = p.settings.get("rows_per_device", {})
        split = "+".join(str(r.get(k, 0)) for k in ("gen", "und", "text"))
        rows.append(f"| {_mesh_str(p.mesh)} | {p.settings.get('remat')} | {p.settings.get('batch_per_device')} "
                    f"({split}) | {p.settings.get('global_batch')} | {p.used_gib:.2f} | "
                    f"{p.times()['step'] * 1e3:.0f} | {100 * p.mfu:.1f}% |")  # fmt: skip
    if not ok:
        rows.append("| (nothing tried fits) | | | | | | |")
    return "\n".join(rows)
