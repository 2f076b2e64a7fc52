"""`janusflow-train` configuration: YAML files (presets in train/configs/) + dotted overrides.

Every section is a frozen dataclass, decoded by draccus (unknown keys and wrong types are errors
naming the key); `TrainConfig.validate` checks the values. A preset may extend another with
`base: other.yaml`. Paths INSIDE a file are resolved against that file's folder when they exist
there (so a preset's `model.processor: processor` works from any working directory); otherwise,
and for overrides given on the command line, they are relative to the working directory (outputs of
earlier runs such as `runs/shapes/vae/export`).

    load_config("train/configs/shapes/stage2.yaml", ["optim.lr=3e-4", "run.steps=100"]) -> TrainConfig
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from janusflow_jax.training.state import OptimConfig, TrainConfigError

TASKS = ("janusflow", "janus", "vae", "vq")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/janusflow"
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    save_every: int = 500  # checkpoint interval in steps (and always at the end)
    keep: int = 3  # checkpoints kept
    async_save: bool = True
    sample_every: int = 0  # write sample images every N steps (0: only at the end if prompts are given)
    sample_prompts: tuple[str, ...] = ()
    sample_steps: int = 30  # janusflow: ODE steps of the sample images
    sample_cfg: float = 2.0
    export_every: int = 0  # also write a loadable params checkpoint (`janusflow_jax.load`) every N steps


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    init_from: str | None = None  # a janusflow-convert checkpoint, an official folder, a run's export, or "default"
    config: str | None = None  # official-format config.json (from scratch)
    preset: str | None = None  # or a named architecture (janusflow-1.3b, janus-pro-1b, janus-pro-7b), from scratch
    vae_config: str | None = None  # vae task, from scratch: a diffusers VAE config.json
    vae_from: str | None = None  # janusflow: VAE weights (a checkpoint or diffusers folder; else init_from's)
    vq_config: str | None = None  # vq task, from scratch: a JSON of VQConfig fields (+ "image_size")
    vq_from: str | None = None  # janus: VQ tokenizer weights (a vq-task export or a Janus folder; else init_from's)
    processor: str | None = None  # folder with tokenizer/processor files (else init_from's)
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (master weights stay float32)
    remat: str = "none"  # none | full | dots
    fsdp_gather: str = "layer"  # layer: stacked layers gather their fsdp-split weights in the scan (ZeRO-3) | once
    scan_layers: bool = True  # false: unroll the LLM/SigLIP layer loops (multi-device CPU meshes; see README)
    init_seed: int = 0


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    kind: str = ""  # one of training.data_sources.SOURCE_KINDS (checked by TrainConfig.validate)
    path: str = ""
    split: str = "train"
    repeats: int = 0  # shapes/geneval only: renders per training spec (0: the builder's default)


@dataclasses.dataclass(frozen=True)
class MixConfig:
    gen: int = 0
    und: int = 0
    text: int = 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    data_dir: str = "data/tfds"  # where TFDS builders write their ArrayRecord files
    gen: SourceConfig = SourceConfig()
    und: SourceConfig = SourceConfig()
    text: SourceConfig = SourceConfig()
    mix: MixConfig = MixConfig()  # rows of each kind per global batch
    gen_prompt_len: int = 64
    und_len: int = 768
    text_len: int = 256
    num_threads: int = 2


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1


# --- losses: the parts shared by the LLM tasks, then one section per objective -----------------------


@dataclasses.dataclass(frozen=True)
class FlowLoss:
    """janusflow: rectified flow in VAE latents."""

    t_dist: str = "logit_normal"  # distribution of flow times: logit_normal | uniform
    t_mean: float = 0.0  # logit-normal location
    t_std: float = 1.0  # logit-normal scale
    vae_sample: bool = False  # latents: posterior sample (True) or its mean (False)


@dataclasses.dataclass(frozen=True)
class RepaLoss:
    """janusflow: REPA, cosine of an MLP of layer-k image-token states to stop-gradient SigLIP features."""

    layer: int = 6  # LLM layer whose image-token states are aligned (paper: 6 of 24)
    weight: float = 1.0  # 0 disables REPA (and its head)
    hidden: int = 2048  # width of the projector h_φ (3-layer SiLU MLP)


@dataclasses.dataclass(frozen=True)
class VaeLoss:
    """vae: L1 + L2 + edge_weight · edge L1 + kl_weight · KL."""

    kl_weight: float = 1e-6
    edge_weight: float = 0.5


@dataclasses.dataclass(frozen=True)
class VqLoss:
    """vq: LlamaGen's tokenizer losses (reconstruction + codebook + β · commitment; its entropy term is 0 in
    the VQ-16 recipe and not implemented; no perceptual or adversarial terms)."""

    l1_weight: float = 0.0  # LlamaGen reconstructs with L2 only; L1 and edges help small synthetic worlds
    l2_weight: float = 1.0
    edge_weight: float = 0.0
    codebook_weight: float = 1.0  # ‖sg(z) − e‖²
    commit_weight: float = 0.25  # β ‖z − sg(e)‖² (LlamaGen commit_loss_beta)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    gen_weight: float = 1.0  # the image part (rectified flow, or the image-code cross-entropy for janus)
    und_weight: float = 1.0
    text_weight: float = 1.0
    cfg_dropout: float = 0.1  # probability of replacing a caption by the sampler's unconditional form
    flow: FlowLoss = FlowLoss()
    repa: RepaLoss = RepaLoss()
    vae: VaeLoss = VaeLoss()
    vq: VqLoss = VqLoss()


# loss sections each task reads (a changed section another task owns is an error, not silently unused)
LOSS_SECTIONS = {
    "janusflow": ("gen_weight", "und_weight", "text_weight", "cfg_dropout", "flow", "repa"),
    "janus": ("gen_weight", "und_weight", "text_weight", "cfg_dropout"),
    "vae": ("vae",),
    "vq": ("vq",),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    task: str = "janusflow"  # janusflow | janus | vae | vq (training/tasks/)
    stage: str | None = None  # the task's stages (janusflow, janus: 1 | 2 | 3; vae, vq: all); default its first
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    def validate(self) -> TrainConfig:
        from janusflow_jax.training.tasks import task_class

        if self.task not in TASKS:
            raise TrainConfigError(f"task: unknown task {self.task!r}; one of {', '.join(TASKS)}")
        cls = task_class(self.task)
        if self.stage is None:
            return dataclasses.replace(self, stage=cls.default_stage).validate()
        if self.stage not in cls.stages:
            raise TrainConfigError(f"stage: task {self.task} has no stage {self.stage!r}; one of {list(cls.stages)}")
        default_loss = LossConfig()
        for f in dataclasses.fields(LossConfig):
            if f.name not in LOSS_SECTIONS[self.task] and getattr(self.loss, f.name) != getattr(default_loss, f.name):
                raise TrainConfigError(f"loss.{f.name}: not used by task {self.task} (it reads "
                                       f"{', '.join('loss.' + s for s in LOSS_SECTIONS[self.task])})")  # fmt: skip
        if self.run.steps <= 0:
            raise TrainConfigError(f"run.steps must be positive, got {self.run.steps}")
        if self.model.dtype not in ("float32", "bfloat16"):
            raise TrainConfigError(f"model.dtype must be float32 or bfloat16, got {self.model.dtype!r}")
        if self.model.remat not in ("none", "full", "dots"):
            raise TrainConfigError(f"model.remat must be none, full or dots, got {self.model.remat!r}")
        if self.model.fsdp_gather not in ("layer", "once"):
            raise TrainConfigError(f"model.fsdp_gather must be layer or once, got {self.model.fsdp_gather!r}")
        if self.optim.grad_accum < 1:
            raise TrainConfigError(f"optim.grad_accum must be ≥ 1, got {self.optim.grad_accum}")
        if self.optim.ema_decay is not None and not 0.0 < self.optim.ema_decay < 1.0:
            raise TrainConfigError(f"optim.ema_decay must be in (0, 1), got {self.optim.ema_decay}")
        if not 0.0 <= self.loss.cfg_dropout <= 1.0:
            raise TrainConfigError(f"loss.cfg_dropout must be in [0, 1], got {self.loss.cfg_dropout}")
        if self.loss.flow.t_dist not in ("logit_normal", "uniform"):
            raise TrainConfigError(f"loss.flow.t_dist must be logit_normal or uniform, got {self.loss.flow.t_dist!r}")
        mix = self.data.mix
        if min(mix.gen, mix.und, mix.text) < 0 or mix.gen + mix.und + mix.text == 0:
            raise TrainConfigError("data.mix: give a non-negative number of rows per kind, at least one positive")
        from janusflow_jax.training.data_sources import SOURCE_KINDS, WORLD_KINDS

        for kind in ("gen", "und", "text"):
            source_kind = getattr(self.data, kind).kind
            if getattr(mix, kind) > 0 and kind not in cls.data_kinds:
                raise TrainConfigError(f"data.mix.{kind}: task {self.task} trains on {'/'.join(cls.data_kinds)} "
                                       f"rows only; set data.mix.{kind}=0")  # fmt: skip
            if getattr(mix, kind) > 0 and not source_kind:
                raise TrainConfigError(f"data.mix.{kind} > 0 but data.{kind}.kind is not set")
            if source_kind and source_kind not in SOURCE_KINDS:
                raise TrainConfigError(f"data.{kind}.kind: unknown kind {source_kind!r}; one of {sorted(SOURCE_KINDS)}")
            repeats = getattr(self.data, kind).repeats
            if repeats and source_kind not in WORLD_KINDS:
                raise TrainConfigError(f"data.{kind}.repeats: only the {'/'.join(WORLD_KINDS)} worlds render repeats; "
                                       f"data.{kind}.kind is {source_kind!r}")  # fmt: skip
            if repeats < 0:
                raise TrainConfigError(f"data.{kind}.repeats must be >= 0 (0: the builder's default), got {repeats}")
            if getattr(mix, kind) % self.optim.grad_accum:
                raise TrainConfigError(f"data.mix.{kind} must be divisible by optim.grad_accum")
        cls.check_model(self.model)
        return self


def _to_plain(x):
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


# model/data fields that name INPUT files or folders (resolved against the file that names them)
_PATH_FIELDS = (
    ("model", "init_from"),
    ("model", "config"),
    ("model", "vae_config"),
    ("model", "vae_from"),
    ("model", "vq_config"),
    ("model", "vq_from"),
    ("model", "processor"),
    ("data", "gen", "path"),
    ("data", "und", "path"),
    ("data", "text", "path"),
)


def _resolve_paths(data: dict, folder: str | None) -> None:
    """Shipped models' names (`model.SHIPPED_MODELS`, in the model fields) to their folders; other relative
    input paths against `folder` (the YAML file naming them; None: left as they are)."""
    from janusflow_jax.model import SHIPPED_MODELS

    for keys in _PATH_FIELDS:
        node = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        v = node.get(keys[-1])
        if keys[0] == "model" and v in SHIPPED_MODELS:
            node[keys[-1]] = SHIPPED_MODELS[v]
        elif folder is not None and isinstance(v, str) and v and not os.path.isabs(v):
            here = os.path.normpath(os.path.join(folder, v))
            if os.path.exists(here):
                node[keys[-1]] = here


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise TrainConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise TrainConfigError(f"override {text!r} is not key=value (e.g. optim.lr=3e-4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise TrainConfigError(f"override {text!r}: {e}") from None
    return key.strip(), value


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise TrainConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise TrainConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: the top level must be a mapping")
    _resolve_paths(data, os.path.dirname(os.path.abspath(path)))
    base = data.pop("base", None)  # presets may extend another file (path relative to this one)
    if base is not None:
        data = _merge(read_yaml(os.path.join(os.path.dirname(path), base)), data)
    return data


def from_dict(data: Mapping) -> TrainConfig:
    """Decode a plain tree (YAML, a checkpoint's saved config) into a TrainConfig; strict."""
    import draccus

    data = dict(data)
    for key in ("stage", "task"):
        if data.get(key) is not None and not isinstance(data[key], (str, int)):
            raise TrainConfigError(f"{key}: expected a string, got {data[key]!r}")
        if isinstance(data.get(key), int) and not isinstance(data[key], bool):
            data[key] = str(data[key])
    _reject_bools(data, TrainConfig, "")
    try:
        return draccus.decode(TrainConfig, data)
    except draccus.utils.DecodingError as e:
        raise TrainConfigError(f"config {_one_line(e)}") from None
    except (TypeError, ValueError) as e:
        raise TrainConfigError(f"config: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _reject_bools(data: Mapping, cls, where: str) -> None:
    """draccus reads `true` as 1 for an int field; a boolean where a number belongs is a mistake."""
    import typing

    hints = typing.get_type_hints(cls)
    for k, v in data.items():
        tp = hints.get(k)
        if tp is None:
            continue
        if dataclasses.is_dataclass(tp) and isinstance(v, Mapping):
            _reject_bools(v, tp, f"{where}{k}.")
        elif isinstance(v, bool) and tp in (int, float, int | None, float | None):
            raise TrainConfigError(f"config `{where}{k}`: expected a number, got {v!r}")


def load_config(path: str | None, overrides: Sequence[str] = (), *, validate: bool = True) -> TrainConfig:
    data = read_yaml(path) if path else {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    _resolve_paths(data, None)  # names given as overrides (model.init_from=default)
    if str(data.get("stage")) == "vae" and "task" not in data:  # before tasks: `stage: vae` meant the VAE trainer
        data["task"], data["stage"] = "vae", "all"
    cfg = from_dict(data)
    return cfg.validate() if validate else cfg
