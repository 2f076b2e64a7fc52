"""Live parity against transformers' `JanusForConditionalGeneration` (the transformers layout of
Janus-Pro) on random tiny configs at two shapes, float32 on CPU.

Each shape: build the torch model with random weights (biases and norms too), `save_pretrained`
it, load the folder with `janusflow_jax.load` (detects the layout, converts through `hf_rules`),
then compare text logits, understanding logits (SigLIP + aligner spliced at the image tokens), VQ
decode, VQ encode, and the greedy CFG image codes of a left-padded batch of two prompts (exact).
Also: strictness of the transformers table (a missing or extra tensor is named), of the config
parser, and of the `Rule.part` bookkeeping.

A known semantic difference: transformers' VQ *encode* l2-normalises neither the latents nor the
codebook (the official one, which we follow, does both). The codes agree when the stored codebook
rows are unit-norm, so the models here get unit-norm rows; decode normalises in both.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from conftest import rel_err

import janusflow_jax
from janusflow_jax import weights
from janusflow_jax.config import ConfigError
from janusflow_jax.janus import config as janus_config
from janusflow_jax.janus.model import JanusModel
from janusflow_jax.weights import ConversionError, Rule

pytestmark = pytest.mark.torch
TOL = 1e-4
BOS, BOI, IMG = 1, 3, 5

SHAPES = {
    # MHA, 1 SigLIP block, 2×2 grid, VQ with 2 levels (downsampling 2), aligner depths 2 / 2
    "a": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=128),
        vision=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16, depth=2),
        vq=dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 1],
                num_res_blocks=1, num_hidden_layers=2),
        pad=0, cfg_weight=5.0,
    ),
    # GQA with head_dim ≠ hidden/heads, θ 5e5, 2 SigLIP blocks (width 48, 3 heads, mlp_ratio 2.5),
    # 3×3 grid, VQ with 3 levels (downsampling 4, 2 res blocks), aligner depths 3 / 1, pad id 7
    "b": dict(
        text=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=160, rope_theta=5e5, rms_norm_eps=1e-5),
        vision=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=48, patch_size=16,
                    mlp_ratio=2.5, depth=3, layer_norm_eps=1e-5),
        vq=dict(embed_dim=4, num_embeddings=96, latent_channels=64, base_channels=32, channel_multiplier=[1, 2, 2],
                num_res_blocks=2, num_hidden_layers=1),
        pad=7, cfg_weight=3.0,
    ),
}  # fmt: skip


def _build_hf(name: str, seed: int = 0):
    s = SHAPES[name]
    d = s["text"]["hidden_size"]
    text = transformers.LlamaConfig(
        **s["text"], max_position_embeddings=256, bos_token_id=BOS, eos_token_id=2, pad_token_id=s["pad"]
    )
    grid = s["vision"]["image_size"] // s["vision"]["patch_size"]
    vision = transformers.JanusVisionConfig(**s["vision"], projection_dim=d, num_image_tokens=grid * grid)
    vq = transformers.JanusVQVAEConfig(**s["vq"], projection_dim=d, image_token_embed_dim=d)
    cfg = transformers.JanusConfig(
        text_config=text, vision_config=vision, vq_config=vq, image_token_id=IMG, tie_word_embeddings=False
    )
    torch.manual_seed(seed)
    model = transformers.JanusForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:  # norms around 1, biases around 0: both non-trivial
                base = 1.0 if "norm" in pname and pname.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(np.prod(p.shape[1:])))
        # unit-norm codebook rows: where transformers' un-normalised VQ encode equals the official one
        e = model.model.vqmodel.quantize.embedding.weight
        e.copy_(e / e.norm(dim=1, keepdim=True))
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.generation_kwargs = s["pad"], BOS, {"boi_token_id": BOI}
    return model


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tmp_path_factory):
    name = request.param
    hf = _build_hf(name)
    folder = tmp_path_factory.mktemp(f"hf-janus-{name}")
    hf.save_pretrained(folder)
    m = janusflow_jax.load(str(folder), dtype="float32")
    m.pad_id = SHAPES[name]["pad"]  # no tokenizer in the folder: the pad id transformers masks with
    return name, hf, m, folder


def _ids(rng, b, n, vocab):
    return rng.randint(10, vocab, (b, n)).astype(np.int64)


def test_loads_as_janus(pair):
    name, hf, m, _ = pair
    assert isinstance(m, JanusModel) and m.family == "janus"
    grid = SHAPES[name]["vision"]["image_size"] // SHAPES[name]["vision"]["patch_size"]
    f = 2 ** (len(SHAPES[name]["vq"]["channel_multiplier"]) - 1)
    assert m.cfg.gen_grid == grid and m.cfg.gen_image_size == grid * f
    assert m.cfg.llm.head_dim == hf.config.text_config.head_dim


def test_text_logits(pair):
    name, hf, m, _ = pair
    ids = _ids(np.random.RandomState(0), 2, 9, hf.config.text_config.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    err = rel_err(m.llm_logits(ids), ref)
    print(f"[{name}] text logits rel err {err:.2e}")
    assert err < TOL


def test_understanding_logits(pair):
    name, hf, m, _ = pair
    rng = np.random.RandomState(1)
    v = SHAPES[name]["vision"]
    n_img = (v["image_size"] // v["patch_size"]) ** 2
    ids = np.concatenate(
        [
            np.full((2, 1), BOS),
            _ids(rng, 2, 2, hf.config.text_config.vocab_size),
            np.full((2, n_img), IMG),
            _ids(rng, 2, 3, hf.config.text_config.vocab_size),
        ],
        axis=1,
    )
    px = rng.uniform(-1, 1, (2, 3, v["image_size"], v["image_size"])).astype(np.float32)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px)).logits.numpy()
    ours = m.understanding_logits(ids, np.moveaxis(px, 1, -1)[:, None], ids == IMG, np.ones((2, 1, n_img), bool))
    err = rel_err(ours, ref)
    print(f"[{name}] understanding logits rel err {err:.2e}")
    assert err < TOL


def test_vq_decode(pair):
    name, hf, m, _ = pair
    codes = np.random.RandomState(2).randint(0, SHAPES[name]["vq"]["num_embeddings"], (2, m.cfg.num_gen_tokens))
    with torch.no_grad():
        ref = hf.decode_image_tokens(torch.tensor(codes)).numpy()  # NHWC already
    err = rel_err(m.vq_decode(codes), ref)
    print(f"[{name}] VQ decode rel err {err:.2e}")
    assert err < TOL


def test_vq_encode_unit_codebook(pair):
    _, hf, m, _ = pair
    s = m.cfg.gen_image_size
    px = np.random.RandomState(3).uniform(-1, 1, (2, 3, s, s)).astype(np.float32)
    with torch.no_grad():
        ref = hf.model.vqmodel.encode(torch.tensor(px)).image_tokens.numpy().reshape(2, m.cfg.gen_grid, m.cfg.gen_grid)
    np.testing.assert_array_equal(np.asarray(m.vq_encode(np.moveaxis(px, 1, -1))), ref)


def test_greedy_image_codes(pair):
    """transformers: stacked CFG rows, uncond = every token but BOS/BOI → pad; ours: BOS (the first
    real token) and the final BOI kept. The prompts hold BOS/BOI only there, so the rows agree."""
    name, hf, m, _ = pair
    rng = np.random.RandomState(4)
    vocab = hf.config.text_config.vocab_size
    rows = [[BOS, *_ids(rng, 1, 3, vocab)[0], BOI], [BOS, *_ids(rng, 1, 6, vocab)[0], BOI]]
    length = max(map(len, rows))
    pad = SHAPES[name]["pad"]
    ids = np.array([[pad] * (length - len(r)) + list(r) for r in rows])
    mask = np.array([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    w = SHAPES[name]["cfg_weight"]
    with torch.no_grad():
        ref = hf.generate(
            inputs=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            generation_mode="image",
            do_sample=False,
            guidance_scale=w,
        ).numpy()
    n = m.cfg.num_gen_tokens
    assert ref.shape == (2, n)
    ours = np.asarray(m.sample_image_tokens(ids, cfg_weight=w, greedy=True, num_tokens=n, prompt_mask=mask))
    print(f"[{name}] greedy codes {ours.tolist()}")
    np.testing.assert_array_equal(ours, ref)


# --- strictness -------------------------------------------------------------------------------


def _rewrite(src, dst, drop=(), add=None):
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    sd = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if k not in drop}
    sd.update(add or {})
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def folder_a(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-janus-strict")
    _build_hf("a").save_pretrained(folder)
    return folder


def test_missing_part_is_named(folder_a, tmp_path):
    bad = _rewrite(folder_a, tmp_path / "bad", drop={"model.vision_model.encoder.layers.0.self_attn.k_proj.bias"})
    with pytest.raises(ConversionError) as e:
        janusflow_jax.load(str(bad))
    assert "vision_model.vision_tower.blocks.attn.qkv_bias (part 1 of axis 0, layers [0])" in str(e.value)


def test_extra_tensors_are_named(folder_a, tmp_path):
    extra = {
        "model.vision_model.encoder.layers.0.self_attn.qkv.weight": np.zeros((96, 32), np.float32),
        "model.aligner.hidden_layers.1.weight": np.zeros((32, 32), np.float32),  # deeper than depth=2
    }
    bad = _rewrite(folder_a, tmp_path / "bad", add=extra)
    with pytest.raises(ConversionError) as e:
        janusflow_jax.load(str(bad))
    for k in extra:
        assert k in str(e.value)


def test_config_strict(folder_a):
    d = json.loads((folder_a / "config.json").read_text())
    cfg = janus_config.from_hf_json(d)
    assert cfg.official is d and cfg.aligner.depth == 2 and cfg.vq.encoder_ch_mult == (1, 1)
    for section, field, value, needle in [
        ("vision_config", "surprise", 1, "surprise"),
        ("vq_config", "double_latent", True, "double_latent"),
        ("vision_config", "hidden_act", "gelu_pytorch_tanh", "hidden_act"),
        ("text_config", "rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}, "factor"),
        ("text_config", "rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4}, "rope_type"),
        ("vision_config", "num_image_tokens", 9, "num_image_tokens"),
        (None, "extra_top", 1, "extra_top"),
    ]:
        bad = json.loads(json.dumps(d))
        (bad[section] if section else bad)[field] = value
        with pytest.raises(ConfigError, match=needle):
            janus_config.from_hf_json(bad)


def test_rule_parts_bookkeeping():
    """`Rule.part`: each slice filled once; a missing or doubled part is named."""
    targets = {("fused",): ((4, 3, 2), np.dtype("float32")), ("stack",): ((2, 3, 4), np.dtype("float32"))}
    src = {f"p{j}": np.full((4, 2), j, np.float32) for j in range(3)}
    src.update({f"l{i}.s{j}": np.full((4,), 10 * i + j, np.float32) for i in range(2) for j in range(3)})
    rules = [Rule(f"p{j}", "fused", part=(1, j)) for j in range(3)]
    rules += [Rule(rf"l(\d+)\.s{j}", "stack.*", part=(0, j)) for j in range(3)]
    out = weights.convert_state_dict(src, src.__getitem__, targets, rules)
    np.testing.assert_array_equal(out[("fused",)][:, :, 0], np.tile([0, 1, 2], (4, 1)))
    np.testing.assert_array_equal(out[("stack",)][1, :, 0], [10, 11, 12])
    partial = {k: v for k, v in src.items() if k not in ("p1", "l1.s2")}
    with pytest.raises(ConversionError) as e:
        weights.convert_state_dict(partial, partial.__getitem__, targets, rules)
    assert "fused (part 1 of axis 1)" in str(e.value) and "stack (part 2 of axis 0, layers [1])" in str(e.value)
    twice = rules + [Rule("again", "fused", part=(1, 0))]
    src2 = {**src, "again": src["p0"]}
    with pytest.raises(ConversionError, match="fused part 0 of axis 1 filled twice"):
        weights.convert_state_dict(src2, src2.__getitem__, targets, twice)


def test_official_json_round_trip_keeps_every_field(pair):
    """A transformers-layout config (shape b: non-default head_dim, rope θ, epsilons) survives the
    official format the converter stores (`to_official_json` → `from_official_json`)."""
    from janusflow_jax.janus.config import from_official_json

    cfg = pair[2].cfg
    assert from_official_json(cfg.to_official_json()) == cfg
