"""janusflow-jax: JanusFlow (arXiv 2411.07975) in JAX/Flax NNX.

Public API: `load()` → `JanusFlowModel` (the parity surface), the configs and presets, the networks.
"""

# First, before anything can create JAX's backends: opt-in CPU scratch reuse (see host_memory).
from janusflow_jax import host_memory as _host_memory

_host_memory.from_environment()

from janusflow_jax.config import (
    JANUSFLOW_1_3B,
    SDXL_VAE,
    TINY,
    TINY_VAE,
    ConfigError,
    JanusFlowConfig,
    LlamaConfig,
    SiglipConfig,
    UViTDecoderConfig,
    UViTEncoderConfig,
    VaeConfig,
)
from janusflow_jax.model import DEFAULT_MODEL, JanusFlowModel, LoadError, load
from janusflow_jax.nn.janusflow import JanusFlow
from janusflow_jax.nn.kv_cache import KVCache
from janusflow_jax.nn.vae import AutoencoderKL

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "JANUSFLOW_1_3B",
    "SDXL_VAE",
    "TINY",
    "TINY_VAE",
    "AutoencoderKL",
    "ConfigError",
    "JanusFlow",
    "JanusFlowConfig",
    "JanusFlowModel",
    "KVCache",
    "LlamaConfig",
    "LoadError",
    "SiglipConfig",
    "UViTDecoderConfig",
    "UViTEncoderConfig",
    "VaeConfig",
    "load",
    "__version__",
]
