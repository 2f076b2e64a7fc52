"""Live parity against diffusers' AutoencoderKL (torch, float32) on random small SDXL-structured
configs, weights through the real converter table."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import rel_err
from janusflow_jax import weights
from janusflow_jax.config import VaeConfig
from janusflow_jax.nn.vae import AutoencoderKL
from janusflow_jax.sharding import use_mesh

pytestmark = pytest.mark.torch
TOL = 1e-4

CONFIGS = {
    "3-level": (dict(block_out_channels=(8, 16, 16), norm_num_groups=4, layers_per_block=1), 32),
    "sdxl-4-level": (dict(block_out_channels=(16, 32, 64, 64), norm_num_groups=8, layers_per_block=2), 32),
    "no-attn-no-quant": (
        dict(
            block_out_channels=(8, 16),
            norm_num_groups=4,
            layers_per_block=1,
            mid_block_add_attention=False,
            use_quant_conv=False,
            use_post_quant_conv=False,
        ),
        24,
    ),
}


def _pair(name):
    import diffusers

    kw, side = CONFIGS[name]
    n = len(kw["block_out_channels"])
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n, latent_channels=4, **kw
    ).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in ref.named_parameters():
            if p.ndim == 1:  # norms and biases matter: move them off 1 / 0
                p.copy_(
                    (1.0 if pname.endswith("norm1.weight") or "norm" in pname and pname.endswith("weight") else 0.0)
                    + 0.1 * torch.randn(p.shape, generator=g)
                )
            else:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(np.prod(p.shape[1:])))
    cfg = VaeConfig.from_diffusers(dict(ref.config))
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    with use_mesh():
        abstract = nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0)))
        pure = weights.unflatten_params(
            weights.convert_state_dict(sd, sd.__getitem__, weights.param_targets(abstract), weights.VAE_RULES)
        )
        gd, st = nnx.split(abstract, nnx.Param)
        nnx.replace_by_pure_dict(st, pure)
        model = nnx.merge(gd, st)
    return ref, model, cfg, side


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encode_decode_match_diffusers(name):
    ref, model, cfg, side = _pair(name)
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(2, 3, side, side)).astype(np.float32)
    f = cfg.downsample_factor
    z = rng.normal(size=(2, 4, side // f, side // f)).astype(np.float32)
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x)).latent_dist
        dec = ref.decode(torch.from_numpy(z)).sample.numpy()
    mean, logvar = model.encode(jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert rel_err(mean, dist.mean.numpy().transpose(0, 2, 3, 1)) < TOL
    assert rel_err(logvar, dist.logvar.numpy().transpose(0, 2, 3, 1)) < TOL
    assert rel_err(model.decode(jnp.asarray(z.transpose(0, 2, 3, 1))), dec.transpose(0, 2, 3, 1)) < TOL


def test_deprecated_attention_names_load_the_same():
    ref, model, cfg, _ = _pair("3-level")
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    old = {}
    for k, v in sd.items():
        for new_name, old_name in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f"attentions.0.{new_name}.", f"attentions.0.{old_name}.")
        old[k] = v
    assert any(".query." in k for k in old)
    with use_mesh():
        abstract = nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0)))
    a = weights.convert_state_dict(sd, sd.__getitem__, weights.param_targets(abstract), weights.VAE_RULES)
    b = weights.convert_state_dict(old, old.__getitem__, weights.param_targets(abstract), weights.VAE_RULES)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
