"""`janusflow-train` configuration: YAML files (presets in train/configs/) + dotted overrides.

Every section is a frozen dataclass; unknown keys, wrong types and impossible values are errors that
name the offending key. `load_config(path, ["optim.lr=3e-4", "run.steps=100"])` → TrainConfig.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from janusflow_jax.training.objective import ObjectiveConfig
from janusflow_jax.training.state import STAGES, OptimConfig, TrainConfigError


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
    sample_steps: int = 30
    sample_cfg: float = 2.0
    export_every: int = 0  # also write a loadable params checkpoint (`janusflow_jax.load`) every N steps


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    init_from: str | None = None  # janusflow-convert checkpoint, official HF folder, a run's export, or "default"
    config: str | None = None  # official-format config.json (from scratch)
    preset: str | None = None  # or a named architecture (janusflow-1.3b; janus-pro-1b/7b for plans), from scratch
    vae_config: str | None = None  # diffusers VAE config.json (from scratch)
    vae_from: str | None = None  # VAE weights: a checkpoint or diffusers folder (else init_from's VAE)
    processor: str | None = None  # folder with tokenizer/processor files (else init_from)
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (master weights stay float32)
    remat: str = "none"  # none | full | dots
    scan_layers: bool = True  # false: unroll the LLM/SigLIP layer loops (multi-device CPU meshes; see README)
    init_seed: int = 0


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    kind: str = ""  # one of training.data_sources.SOURCE_KINDS (checked by TrainConfig.validate)
    path: str = ""
    split: str = "train"


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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    stage: str = "1"
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    loss: ObjectiveConfig = ObjectiveConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))

    def validate(self) -> TrainConfig:
        if self.stage not in STAGES:
            raise TrainConfigError(f"stage: unknown stage {self.stage!r}; one of {sorted(STAGES)}")
        if self.run.steps <= 0:
            raise TrainConfigError(f"run.steps must be positive, got {self.run.steps}")
        if self.model.dtype not in ("float32", "bfloat16"):
            raise TrainConfigError(f"model.dtype must be float32 or bfloat16, got {self.model.dtype!r}")
        if self.optim.grad_accum < 1:
            raise TrainConfigError(f"optim.grad_accum must be ≥ 1, got {self.optim.grad_accum}")
        if self.optim.ema_decay is not None and not 0.0 < self.optim.ema_decay < 1.0:
            raise TrainConfigError(f"optim.ema_decay must be in (0, 1), got {self.optim.ema_decay}")
        if not 0.0 <= self.loss.cfg_dropout <= 1.0:
            raise TrainConfigError(f"loss.cfg_dropout must be in [0, 1], got {self.loss.cfg_dropout}")
        mix = self.data.mix
        if min(mix.gen, mix.und, mix.text) < 0 or mix.gen + mix.und + mix.text == 0:
            raise TrainConfigError("data.mix: give a non-negative number of rows per kind, at least one positive")
        from janusflow_jax.training.data_sources import SOURCE_KINDS

        for kind in ("gen", "und", "text"):
            source_kind = getattr(self.data, kind).kind
            if getattr(mix, kind) > 0 and not source_kind:
                raise TrainConfigError(f"data.mix.{kind} > 0 but data.{kind}.kind is not set")
            if source_kind and source_kind not in SOURCE_KINDS:
                raise TrainConfigError(f"data.{kind}.kind: unknown kind {source_kind!r}; one of {sorted(SOURCE_KINDS)}")
            if getattr(mix, kind) % self.optim.grad_accum:
                raise TrainConfigError(f"data.mix.{kind} must be divisible by optim.grad_accum")
        if self.stage == "vae":
            if mix.und or mix.text:
                raise TrainConfigError("stage vae trains on images only: set data.mix.und and data.mix.text to 0")
            if self.optim.grad_accum != 1:
                raise TrainConfigError("stage vae does not support optim.grad_accum > 1")
            if self.model.init_from is None and self.model.vae_config is None:
                raise TrainConfigError("stage vae: give model.vae_config (diffusers config.json) or model.init_from")
        elif self.model.init_from is None and self.model.config is None and self.model.preset is None:
            raise TrainConfigError("model: give model.init_from, model.config (official config.json) or model.preset")
        elif self.model.init_from is None and self.model.vae_from is None:
            raise TrainConfigError("model: a JanusFlow trained from scratch needs trained VAE weights (model.vae_from)")
        return self


def _to_plain(x):
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _coerce(value: Any, tp, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except TrainConfigError:
                pass
        raise TrainConfigError(f"{where}: {value!r} is not a {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise TrainConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TrainConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        elem = args[0]
        return tuple(_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TrainConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise TrainConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TrainConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise TrainConfigError(f"{where}: unsupported type {tp}")


def _build(cls, data: Mapping, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise TrainConfigError(f"unknown config key {key!r} (known: {', '.join(sorted(names))})")
    kw = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kw)


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
    base = data.pop("base", None)  # presets may extend another file (path relative to this one)
    if base is not None:
        data = _merge(read_yaml(os.path.join(os.path.dirname(path), base)), data)
    return data


def load_config(path: str | None, overrides: Sequence[str] = (), *, validate: bool = True) -> TrainConfig:
    data = read_yaml(path) if path else {}
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    if "stage" in data:
        data["stage"] = str(data["stage"])
    cfg = _build(TrainConfig, data)
    return cfg.validate() if validate else cfg


def from_dict(data: Mapping) -> TrainConfig:
    return _build(TrainConfig, dict(data, stage=str(data.get("stage", "1"))))
