"""A from-scratch SigLIP tower starts with its position table as the 2-D sin-cos embedding.

With the former N(0, 0.02) table, the tokens of a random tower were keyed by content only: a scene's
background tokens could not be told apart by where they are (the nearest blank-image token was the
same-index one for 13 of 56), and a JanusFlow trained from scratch on the GenEval world never learned
"is the A left of the B?" (README, "The GenEval world")."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from janusflow_jax.config import SiglipConfig
from janusflow_jax.geneval import world
from janusflow_jax.nn import siglip
from janusflow_jax.sharding import use_mesh


def test_sincos2d_table_is_the_formula():
    grid, width = 4, 18  # 4 channels per quarter, 2 left over
    table = np.asarray(siglip.sincos2d_init(grid)(None, (grid * grid, width), jnp.float32))
    omega = 10_000.0 ** -(np.arange(4) / 3)
    for r in range(grid):
        for c in range(grid):
            want = np.concatenate([np.sin(c * omega), np.cos(c * omega), np.sin(r * omega), np.cos(r * omega), [0, 0]])
            np.testing.assert_allclose(table[r * grid + c], want, atol=1e-6)  # row-major patches
    dist = np.linalg.norm(table[:, None] - table[None], axis=-1)
    assert dist[~np.eye(grid * grid, dtype=bool)].min() > 0.1  # every patch its own row


def test_random_tower_tokens_are_keyed_by_position():
    # the GenEval presets' tower (train/configs/geneval/config.json), randomly initialised
    cfg = SiglipConfig(image_size=64, patch_size=8, width=192, depth=4, num_heads=3, mlp_dim=768)
    with use_mesh():
        tower = siglip.VisionTransformer(cfg, rngs=nnx.Rngs(0))
    img = world.render(world.all_specs("color_attr")[5], 0).astype(np.float32) / 127.5 - 1.0
    feats = np.asarray(tower(jnp.stack([jnp.ones((64, 64, 3)), jnp.asarray(img)])))
    feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    background = (img.reshape(8, 8, 8, 8, 3).transpose(0, 2, 1, 3, 4).reshape(64, -1) == 1.0).all(1)
    assert background.sum() >= 48
    nearest = np.argmax(feats[1] @ feats[0].T, axis=1)  # each scene token's nearest blank-image token
    assert (nearest == np.arange(64))[background].all()
