"""Training tasks: what `janusflow-train` trains, one file each, behind one protocol (`base.Task`).

janusflow  JanusFlow: autoregressive understanding/text + rectified-flow generation + REPA
janus      Janus / Janus-Pro: understanding/text + next-code cross-entropy on VQ image codes (CFG dropout)
vae        an AutoencoderKL (the latent space of a JanusFlow) on images
vq         a LlamaGen VQ tokenizer (the image codes of a Janus) on images
"""

from __future__ import annotations


def task_class(name: str):
    from janusflow_jax.training.state import TrainConfigError

    if name == "janusflow":
        from janusflow_jax.training.tasks.janusflow import JanusFlowTask as cls
    elif name == "janus":
        from janusflow_jax.training.tasks.janus import JanusTask as cls
    elif name == "vae":
        from janusflow_jax.training.tasks.vae import VaeTask as cls
    elif name == "vq":
        from janusflow_jax.training.tasks.vq import VqTask as cls
    else:
        raise TrainConfigError(f"task: unknown task {name!r}; one of janusflow, janus, vae, vq")
    return cls
