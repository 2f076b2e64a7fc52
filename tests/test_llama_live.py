"""Live parity against transformers' LlamaForCausalLM on random tiny configs (float32, CPU):
full forward at several shapes (MHA and GQA), left-padded batches, and KV-cached decoding.
Weights go through the real converter table (`language_model.*` keys)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import rel_err
from janusflow_jax import weights
from janusflow_jax.config import LlamaConfig
from janusflow_jax.nn.kv_cache import DecodeCache
from janusflow_jax.nn.llama import LlamaForCausalLM, positions_from_mask
from janusflow_jax.sharding import use_mesh

pytestmark = pytest.mark.torch
TOL = 1e-4

CONFIGS = {
    "mha": dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=10000.0,
    ),
    "gqa": dict(
        vocab_size=131,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        rope_theta=500000.0,
    ),
}


class _Wrap(nnx.Module):
    def __init__(self, cfg, *, rngs):
        self.language_model = LlamaForCausalLM(cfg, rngs=rngs)


def _build(name: str, seed: int = 0):
    import transformers

    kw = CONFIGS[name]
    torch.manual_seed(seed)
    hf_cfg = transformers.LlamaConfig(**kw, rms_norm_eps=1e-6, max_position_embeddings=256, tie_word_embeddings=False)
    hf_cfg._attn_implementation = "eager"
    ref = transformers.LlamaForCausalLM(hf_cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in ref.named_parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[-1]))
    sd = {f"language_model.{k}": v.detach().numpy() for k, v in ref.state_dict().items()}
    cfg = LlamaConfig(**kw, rms_norm_eps=1e-6, max_position_embeddings=256)
    with use_mesh():
        abstract = nnx.eval_shape(lambda: _Wrap(cfg, rngs=nnx.Rngs(0)))
        pure = weights.unflatten_params(
            weights.convert_state_dict(
                sd.keys(), sd.__getitem__, weights.param_targets(abstract), weights.JANUSFLOW_RULES
            )
        )
        gd, state = nnx.split(abstract, nnx.Param)
        nnx.replace_by_pure_dict(state, pure)
        model = nnx.merge(gd, state).language_model
    return ref, model, cfg


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    return _build(request.param)


@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (3, 33)])
def test_full_forward(pair, shape):
    ref, model, cfg = pair
    ids = np.random.default_rng(shape[1]).integers(0, cfg.vocab_size, size=shape)
    with torch.no_grad():
        want = ref(torch.as_tensor(ids)).logits.numpy()
    got = model(jnp.asarray(ids, jnp.int32))
    assert rel_err(got, want) < TOL


def test_left_padded_batch(pair):
    ref, model, cfg = pair
    rng = np.random.default_rng(5)
    ids = rng.integers(0, cfg.vocab_size, size=(3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[0, :4] = 0
    mask[2, :9] = 0
    pos = np.asarray(positions_from_mask(jnp.asarray(mask), ids.shape))
    with torch.no_grad():
        want = ref(
            torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), position_ids=torch.as_tensor(pos)
        ).logits.numpy()
    got = model(jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask))
    valid = mask.astype(bool)
    assert rel_err(np.asarray(got)[valid], want[valid]) < TOL
    # each row equals the same row run alone without padding
    for r in range(3):
        alone = model(jnp.asarray(ids[r : r + 1, valid[r]], jnp.int32))
        assert rel_err(np.asarray(got)[r, valid[r]], alone[0]) < TOL


@pytest.mark.parametrize("streamed", [False, True], ids=["sliced-once", "streamed"])
def test_cached_decode_matches_full_forward(pair, streamed):
    ref, model, cfg = pair
    rng = np.random.default_rng(7)
    b, prompt, new = 2, 9, 5
    ids = rng.integers(0, cfg.vocab_size, size=(b, prompt + new))
    mask = np.ones((b, prompt + new), np.int32)
    mask[1, :3] = 0  # left padding in row 1
    pos = np.asarray(positions_from_mask(jnp.asarray(mask), ids.shape))
    with torch.no_grad():
        want = ref(
            torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), position_ids=torch.as_tensor(pos)
        ).logits.numpy()
    # prefill the prompt (return_kv), then decode one token at a time from a DecodeCache
    lm = model

    @jax.jit
    def prefill(i, p, m):
        hidden, (k, v), _ = lm.model._run(lm.embed(i), p, m, return_kv=True)  # every position's logits
        c = DecodeCache.from_prefill(k, v, m, new + 3)
        return lm.logits(hidden), (c.stacked() if streamed else c)

    @jax.jit
    def step(c, i, p):
        if streamed:  # each layer's weights read from the stack inside the step
            hidden, c = lm.model.decode_streamed(lm.embed(i), p, c)
        else:
            hidden, c = lm.model.decode(lm.model.layer_modules(), lm.embed(i), p, c)
        return lm.logits(hidden), c

    logits, cache = prefill(
        jnp.asarray(ids[:, :prompt], jnp.int32), jnp.asarray(pos[:, :prompt]), jnp.asarray(mask[:, :prompt])
    )
    valid = mask[:, :prompt].astype(bool)
    assert rel_err(np.asarray(logits)[valid], want[:, :prompt][valid]) < TOL
    for k in range(prompt, prompt + new):
        logits, cache = step(cache, jnp.asarray(ids[:, k : k + 1], jnp.int32), jnp.asarray(pos[:, k : k + 1]))
        assert rel_err(logits[:, 0], want[:, k]) < TOL
    assert int(cache.count) == new


def test_remat_gives_same_values_and_gradients(pair):
    """Remat trades memory for compute; it must not change a value or a gradient."""
    _, model, cfg = pair
    ids = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, size=(2, 10)), jnp.int32)
    _, state = nnx.split(model, nnx.Param)
    with use_mesh():
        remat_abstract = nnx.eval_shape(
            lambda: LlamaForCausalLM(dataclasses.replace(cfg, remat="full"), rngs=nnx.Rngs(0))
        )
    remat_gd, _ = nnx.split(remat_abstract, nnx.Param)
    plain_gd, _ = nnx.split(model, nnx.Param)

    def loss(gd, s):
        return jnp.mean(nnx.merge(gd, s)(ids) ** 2)

    l0, g0 = jax.value_and_grad(lambda s: loss(plain_gd, s))(state)
    l1, g1 = jax.value_and_grad(lambda s: loss(remat_gd, s))(state)
    assert abs(float(l0) - float(l1)) <= 1e-6 * abs(float(l0))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert rel_err(b, a) < 1e-5
