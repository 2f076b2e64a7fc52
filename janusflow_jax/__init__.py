"""janusflow-jax: the Janus family in JAX/Flax NNX — JanusFlow (arXiv 2411.07975: rectified flow in
SDXL-VAE latents) and Janus-1.3B / Janus-Pro-1B / Janus-Pro-7B (VQ-16 codes, autoregressive).

Public API: `load()` → `JanusFlowModel` or `JanusModel` (the family is detected; both share
`ModelBase`), the configs and presets, the networks.
"""

# First, before anything can create JAX's backends: no TPU probe on a machine without one (see
# _platforms), opt-in CPU scratch reuse (see host_memory).
from janusflow_jax import _platforms
from janusflow_jax import host_memory as _host_memory

_platforms.skip_absent_tpu()
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
from janusflow_jax.base import ModelBase
from janusflow_jax.janus.config import JANUS_1_3B, JANUS_PRO_1B, JANUS_PRO_7B, JanusConfig
from janusflow_jax.janus.model import JanusModel
from janusflow_jax.model import DEFAULT_MODEL, JanusFlowModel, LoadError, detect_family, load
from janusflow_jax.nn.janus import Janus
from janusflow_jax.nn.janusflow import JanusFlow
from janusflow_jax.nn.kv_cache import KVCache
from janusflow_jax.nn.vae import AutoencoderKL

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "JANUSFLOW_1_3B",
    "JANUS_1_3B",
    "JANUS_PRO_1B",
    "JANUS_PRO_7B",
    "Janus",
    "JanusConfig",
    "JanusModel",
    "ModelBase",
    "detect_family",
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
