"""The Janus family (Janus-1.3B, Janus-Pro-1B, Janus-Pro-7B): images as VQ-16 codes predicted one
by one by the shared LLM (`gen_embed → gen_aligner` in, `gen_head` out) with CFG on the logits.

Declared here in one place: `config` (the official config.json), `weights` (the checkpoint tables),
`generation` (the official sampling procedure, compiled), `model` (the loaded-model object).
The networks live in `janusflow_jax/nn/janus.py` and `nn/vq.py`.
"""
