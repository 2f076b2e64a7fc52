"""janusflow-export: the import tables run backwards, for both families and both layouts.

- The official-layout export of the golden fixtures reproduces the official files tensor for tensor,
  bit for bit (all but the tensors the import skips by name), and reloads bit-identically; so does a
  training run's export (Orbax source) and the shipped bfloat16 model; a bfloat16 export of float32
  parameters is their round-to-nearest-even rounding, exactly.
- The transformers-layout export reproduces a `JanusForConditionalGeneration.save_pretrained` file
  bit for bit, loads with `from_pretrained` with no missing or unexpected key, and gives our text
  logits (≤ 1e-4 relative, fp32) and our greedy CFG image codes (exact) with the exported
  generation config.
- At full size (abstract parameters under `jax.eval_shape`) the exported key sets, shapes and dtypes
  are the real checkpoints' (JanusFlow-1.3B + SDXL-VAE, Janus-Pro-1B, Janus-Pro-7B).
- Sharding, and bad inputs (one line on stderr, exit 2, nothing written).
"""

import dataclasses
import json
import os
import re
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURES, JANUS_DIR, TINY_DIR, rel_err
from flax import nnx

import janusflow_jax
from convert.export import main
from janusflow_jax import checkpoint, weights
from janusflow_jax import export as ex
from janusflow_jax.base import special_ids
from janusflow_jax.config import JANUSFLOW_1_3B, SDXL_VAE, from_official_json
from janusflow_jax.janus import weights as janus_weights
from janusflow_jax.janus.config import JANUS_PRO_1B, JANUS_PRO_7B
from janusflow_jax.janus.model import JanusModel, abstract_module
from janusflow_jax.model import DEFAULT_MODEL, abstract_modules
from janusflow_jax.safetensors_io import SafetensorsFile
from janusflow_jax.weight_files import open_weights

BF16 = np.dtype(ml_dtypes.bfloat16)


def _flat(model) -> dict:
    """{(tree, *path): host array} of every parameter of a loaded model."""
    trees = {"model": model.params} if model.family == "janus" else {"model": model.params, "vae": model.vae_params}
    return {
        (name, *p): np.asarray(a)
        for name, t in trees.items()
        for p, a in weights.flatten_params(nnx.to_pure_dict(t)).items()
    }


def _assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, x in a.items():
        assert x.dtype == b[k].dtype and x.shape == b[k].shape, k
        assert np.array_equal(x.view(np.uint8), b[k].view(np.uint8)), k


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


def _check_shards(folder, stem: str, limit: int) -> int:
    """`stem` is written as ≥ 2 shards + a standard index (total_size, weight_map) within `limit`
    bytes each (a bigger tensor alone); returns the number of shards."""
    assert not (folder / f"{stem}.safetensors").exists()
    index = json.loads((folder / f"{stem}.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob(f"{stem}-*-of-*.safetensors"))
    assert len(shards) >= 2 and set(index["weight_map"].values()) == set(shards)
    assert shards[-1] == f"{stem}-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    total = 0
    for name in shards:
        f = SafetensorsFile(str(folder / name))
        keys = list(f.keys())
        sizes = [f.get(k).nbytes for k in keys]
        assert sum(sizes) <= limit or len(sizes) == 1, name
        assert all(index["weight_map"][k] == name for k in keys) and f.metadata == {"format": "pt"}
        total += sum(sizes)
    assert index["metadata"]["total_size"] == total and len(index["weight_map"]) == sum(
        len(SafetensorsFile(str(folder / n)).keys()) for n in shards
    )
    return len(shards)


# --- the inversion itself ---------------------------------------------------------------------------


def test_every_transform_inverts_exactly():
    """`_to_torch` then the importer's `_apply` is the identity for every transform the tables use."""
    rng = np.random.default_rng(0)
    leaves = {
        "identity": (5, 3),
        "linear": (4, 6),
        "heads_in": (8, 3, 2, 4),
        "heads_bias": (3, 2, 4),
        "heads_out": (2, 4, 8),
        "conv": (3, 3, 4, 5),
        "conv1x1_linear": (4, 6),
        "squeeze": (7, 8),
    }
    for t, leaf in leaves.items():
        rule = weights.Rule("x", "x", t, torch_ndim=3 if t == "squeeze" else None)
        a = rng.standard_normal(leaf).astype(np.float32)
        shape = ex._torch_shape(rule, leaf)
        back = weights._apply(t, ex._to_torch(t, a, shape), leaf, "x")
        np.testing.assert_array_equal(back, a, err_msg=t)
    with pytest.raises(ex.ExportError, match="torch_ndim"):
        ex._torch_shape(weights.Rule("x", "x", "squeeze"), (7, 8))
    with pytest.raises(ex.ExportError, match="cannot be inverted"):
        ex.invert_rules([weights.Rule(r"a\.\d+\.w", "a.w")], {("a", "w"): ((2,), np.float32)}, tree="t")


# --- official layout: the golden fixtures, a training run, the shipped model -------------------------


def _same_tensors(src, out, family) -> int:
    """Every tensor of the export equals the official file's (key, shape, dtype, bytes); the keys
    left out are exactly the never-run ones the import skips by name. Returns the tensor count."""
    ignored = weights.JANUSFLOW_IGNORED if family == "janusflow" else janus_weights.OFFICIAL_IGNORED
    parts = [("model", src, out, ignored)]
    if family == "janusflow":
        parts.append(("diffusion_pytorch_model", src / "vae", out / "vae", weights.VAE_IGNORED))
    n = 0
    for stem, a_dir, b_dir, skip in parts:
        a, b = open_weights(str(a_dir), stem), open_weights(str(b_dir), stem)
        dropped = set(a.keys()) - set(b.keys())
        assert set(b.keys()) <= set(a.keys())
        assert all(any(re.fullmatch(p, k) for p in skip) for k in dropped), dropped
        for k in b.keys():  # noqa: SIM118 -- Weights is not a dict
            assert b.shape(k) == a.shape(k) and b.dtype(k) == a.dtype(k), k
            assert np.array_equal(b.get(k).view(np.uint8), a.get(k).view(np.uint8)), k
        n += len(b.keys())
    a = open_weights(str(src), "model")
    dropped = sorted(set(a.keys()) - set(open_weights(str(out), "model").keys()))
    tower = "vision_und_enc_model.vision_tower" if family == "janusflow" else "vision_model.vision_tower"
    assert {k.split(".attn_pool.")[0] for k in dropped if ".attn_pool." in k} == {tower}
    assert [k for k in dropped if ".attn_pool." not in k] == (
        [] if family == "janusflow" else ["gen_vision_model.quantize.codebook_used"]
    )
    return n


@pytest.mark.parametrize("family", ["janusflow", "janus"])
def test_official_export_reproduces_the_official_files(family, tiny_model, janus_model, tmp_path):
    """float32 export of the fixtures (loaded from their official folders). Janus is written with a
    small --max-shard-size: shards + index; JanusFlow as single files."""
    model, src = (tiny_model, TINY_DIR) if family == "janusflow" else (janus_model, JANUS_DIR)
    out = tmp_path / "out"
    shard = "400KB" if family == "janus" else "5GB"
    s = ex.export_model(model, str(out), to="official", dtype="float32", max_shard_size=shard)
    assert _same_tensors(src, out, family) == s.num_tensors
    if family == "janus":
        assert _check_shards(out, "model", 400_000) >= 3
    else:
        assert {"model.safetensors", "vae/diffusion_pytorch_model.safetensors"} <= set(s.files)
    # config, tokenizer/processor files, and the reload
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == "float32"
    for name in checkpoint.PROCESSOR_FILES:
        assert (out / name).read_bytes() == (src / name).read_bytes()
    back = janusflow_jax.load(str(out), dtype="float32")
    assert back.cfg == model.cfg and back.family == family
    if family == "janusflow":
        assert back.vae_cfg == model.vae_cfg
    assert (back.pad_id, back.eos_id, back.bos_id) == (model.pad_id, model.eos_id, model.bos_id)
    _assert_bit_identical(_flat(back), _flat(model))


def test_training_run_directory_exports_its_export(tiny_model, tmp_path, capsys):
    """A run directory (checkpoints/ + export/ as janusflow-train writes them) exports its export/:
    Orbax source, float32, through the CLI, sharded small (the VAE folder too); every tensor equals
    the official files the parameters came from."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    host = {"janusflow": nnx.to_pure_dict(tiny_model.params), "vae": nnx.to_pure_dict(tiny_model.vae_params)}
    host = jax.tree.map(np.asarray, host)
    meta = {"config": tiny_model.cfg.official, "vae_config": tiny_model.vae_cfg.to_diffusers(), "dtype": "float32",
            "trained_steps": 3}  # fmt: skip
    extra = {n: str(TINY_DIR / n) for n in checkpoint.PROCESSOR_FILES}
    checkpoint.save_params(str(run / "export"), host, meta, extra_files=extra)
    out = tmp_path / "out"
    rc, cap = _run([run, "--to", "official", "--out", out, "--dtype", "float32", "--max-shard-size", "0.4MB"], capsys)
    assert rc == 0, cap.err
    assert "exporting: 360/360 tensors" in cap.err and "wrote" in cap.out
    assert _same_tensors(TINY_DIR, out, "janusflow") == 360
    assert (
        _check_shards(out, "model", 400_000) >= 3
        and _check_shards(out / "vae", "diffusion_pytorch_model", 400_000) >= 3
    )


def test_default_model_bfloat16(tmp_path):
    """The shipped (bfloat16) model ("default", the CLI's default dtype): stored bf16 tensors,
    reloaded bit-identical to loading it in bf16."""
    assert ex.resolve_checkpoint("default") == ex.resolve_checkpoint(None) == DEFAULT_MODEL
    ref = janusflow_jax.load(DEFAULT_MODEL, dtype="bfloat16")
    ex.export_model(ref, str(tmp_path / "out"), to="official")
    f = SafetensorsFile(str(tmp_path / "out" / "model.safetensors"))
    assert {f.dtype(k) for k in list(f.keys())} == {BF16} and f.metadata == {"format": "pt"}
    back = janusflow_jax.load(str(tmp_path / "out"), dtype="bfloat16")
    assert back.cfg == ref.cfg and back.vae_cfg == ref.vae_cfg
    _assert_bit_identical(_flat(back), _flat(ref))


def test_bfloat16_export_of_float32_params_is_their_rounding(tiny_model, tmp_path):
    """bf16 storage of float32 parameters: exactly round-to-nearest-even, so not bit-identical to
    the float32 parameters: within the bf16 unit roundoff (2^-8 relative) of each value."""
    ex.export_model(tiny_model, str(tmp_path / "out"), to="official", dtype="bfloat16")
    back = _flat(janusflow_jax.load(str(tmp_path / "out"), dtype="float32"))
    ref = _flat(tiny_model)
    _assert_bit_identical(back, {k: v.astype(BF16).astype(np.float32) for k, v in ref.items()})
    worst = max(float(np.max(np.abs(back[k] - v) / np.maximum(np.abs(v), 1e-30))) for k, v in ref.items())
    print(f"bf16 export of fp32 params: max relative change {worst:.2e}")
    assert 0 < worst <= 2.0**-8  # bf16 unit roundoff (8 significant bits)


# --- transformers' layout ----------------------------------------------------------------------------


@pytest.mark.torch
def test_hf_export_is_the_exact_inverse_of_hf_rules(tmp_path):
    """transformers' own file → our load → export: the same keys and bytes, and it loads cleanly."""
    import transformers
    from test_janus_hf import _build_hf

    hf = _build_hf("b")
    hf.save_pretrained(tmp_path / "src")
    m = janusflow_jax.load(str(tmp_path / "src"), dtype="float32")
    ex.export_model(m, str(tmp_path / "out"), to="hf", dtype="float32")
    ref = {k: v.numpy() for k, v in hf.state_dict().items()}
    got = open_weights(str(tmp_path / "out"))
    assert set(got.keys()) == set(ref)
    for k, v in ref.items():
        assert np.array_equal(got.get(k), v), k
    _, info = transformers.JanusForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info
    back = janusflow_jax.load(str(tmp_path / "out"), dtype="float32")
    assert back.cfg == m.cfg
    _assert_bit_identical(_flat(back), _flat(m))


@pytest.fixture(scope="module")
def hf_able_janus(janus_model):
    """The Janus-Pro fixture made expressible in transformers' layout: its gen_head resized to the
    LLM width (new random weights, the rest unchanged) and one code per SigLIP patch (4×4); with the
    fixture's tokenizer, so the export carries real token ids."""
    cfg = janus_model.cfg
    d = cfg.llm.hidden_size
    cfg = dataclasses.replace(cfg, gen_head=dataclasses.replace(cfg.gen_head, image_token_embed=d), gen_image_size=16)
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(janus_model.params))
    rng = np.random.default_rng(0)
    k = cfg.gen_head.image_token_size
    pure["gen_head"] = {
        "output_mlp_projector": {"kernel": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32),
                                 "bias": (0.05 * rng.standard_normal(d)).astype(np.float32)},
        "vision_head": {"kernel": (3 * rng.standard_normal((d, k)) / np.sqrt(d)).astype(np.float32),
                        "bias": (0.05 * rng.standard_normal(k)).astype(np.float32)},
    }  # fmt: skip
    return JanusModel.from_host_params(cfg, pure, processor_dir=str(JANUS_DIR), **special_ids(str(JANUS_DIR)))


@pytest.mark.torch
def test_hf_export_runs_in_transformers(hf_able_janus, tmp_path):
    import torch
    import transformers

    m = hf_able_janus
    ex.export_model(m, str(tmp_path / "out"), to="hf", dtype="float32")
    hf, info = transformers.JanusForConditionalGeneration.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info
    hf.eval()
    p = m.processor
    assert hf.config.image_token_id == p.image_id and hf.generation_config.pad_token_id == p.pad_id
    rng = np.random.RandomState(0)
    ids = rng.randint(0, m.cfg.llm.vocab_size, (2, 11))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    err = rel_err(m.llm_logits(ids), ref)
    print(f"transformers on the hf export: text logits rel err {err:.2e}")
    assert err <= 1e-4
    # greedy CFG codes of a left-padded batch of two prompts (BOS first, BOI last, plain ids between)
    rows = [
        [p.bos_id, *rng.randint(10, 250, 3), p.image_start_id],
        [p.bos_id, *rng.randint(10, 250, 6), p.image_start_id],
    ]
    length = max(map(len, rows))
    ids = np.array([[p.pad_id] * (length - len(r)) + r for r in rows])
    mask = np.array([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        codes = hf.generate(inputs=torch.tensor(ids), attention_mask=torch.tensor(mask), generation_mode="image",
                            do_sample=False, guidance_scale=5.0).numpy()  # fmt: skip
    ours = np.asarray(m.sample_image_tokens(ids, cfg_weight=5.0, greedy=True, prompt_mask=mask))
    assert codes.shape == ours.shape == (2, 16)
    print(f"greedy codes {ours.tolist()}")
    np.testing.assert_array_equal(ours, codes)


# --- full size: the real checkpoints' key lists --------------------------------------------------------


def _listing(name):
    d = json.loads((FIXTURES / "full-size" / name).read_text())
    return {t["key"]: (tuple(t["shape"]), t["dtype"]) for t in d["tensors"]}


def _plan_listing(tensors):
    return {t.name: (t.shape, t.dtype.name) for t in tensors}


def _check_against(plan: dict, real: dict, never_run: str) -> None:
    dropped = set(real) - set(plan)
    assert set(plan) <= set(real), sorted(set(plan) - set(real))[:5]
    assert dropped and all(re.fullmatch(never_run, k) for k in dropped), sorted(dropped)
    assert {k: real[k] for k in plan} == plan


def test_plan_matches_the_real_janusflow_checkpoint():
    jf, vae = abstract_modules(JANUSFLOW_1_3B, SDXL_VAE)
    targets = {"janusflow": weights.param_targets(jf), "vae": weights.param_targets(vae)}
    plan = ex.plan_for("janusflow", "official", JANUSFLOW_1_3B, targets, dtype=BF16)
    _check_against(_plan_listing(plan["model"]), _listing("janusflow-1.3b-state-dict.json"),
                   r"vision_und_enc_model\.vision_tower\.attn_pool\..*")  # fmt: skip
    vae_plan = _plan_listing(plan["vae/diffusion_pytorch_model"])  # the published SDXL-VAE is float32
    assert {k: s for k, (s, _) in vae_plan.items()} == {
        k: s for k, (s, _) in _listing("sdxl-vae-state-dict.json").items()
    }
    assert {dt for _, dt in vae_plan.values()} == {"bfloat16"}  # --dtype applies to every tensor
    assert len(ex.shard_plan(plan["model"], ex.parse_size("5GB"))) == 1  # one model.safetensors, as published
    assert from_official_json(JANUSFLOW_1_3B.to_official_json()) == JANUSFLOW_1_3B


@pytest.mark.parametrize("size", ["1b", "7b"])
def test_plan_matches_the_real_janus_pro_checkpoints(size):
    cfg = {"1b": JANUS_PRO_1B, "7b": JANUS_PRO_7B}[size]
    plan = ex.plan_for("janus", "official", cfg, {"janus": weights.param_targets(abstract_module(cfg))}, dtype=BF16)
    real = _listing(f"janus-pro-{size}-state-dict.json")
    _check_against(_plan_listing(plan["model"]), real,
                   r"vision_model\.vision_tower\.attn_pool\..*|gen_vision_model\.quantize\.codebook_used")  # fmt: skip
    shards = ex.shard_plan(plan["model"], ex.parse_size("5GB"))
    assert all(sum(t.nbytes for t in s) <= 5 * 10**9 for s in shards)
    assert len(shards) == {"1b": 1, "7b": 3}[size]


# --- bad inputs ------------------------------------------------------------------------------------------


def _bad_cases(tmp_path):
    (tmp_path / "exists").mkdir()
    (tmp_path / "run" / "checkpoints" / "10").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    cut = tmp_path / "cut"
    shutil.copytree(JANUS_DIR, cut)
    os.chmod(cut / "model.safetensors", 0o644)
    with open(cut / "model.safetensors", "r+b") as f:
        f.truncate(1_000_000)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    return {
        "janusflow-hf": ([TINY_DIR, "--to", "hf"], "JanusFlow has no transformers layout"),
        "janus-hf-inexpressible": ([JANUS_DIR, "--to", "hf"], "gen_head width 96 is not the LLM width 64"),
        "existing-out": ([JANUS_DIR, "--to", "official", "--out", tmp_path / "exists"], "already exists"),
        "run-without-export": ([tmp_path / "run", "--to", "official"], "training run directory with no export yet"),
        "missing": ([tmp_path / "nowhere", "--to", "official"], "no such checkpoint"),
        "truncated": ([cut, "--to", "official"], "truncated file"),
        "corrupt-config": ([broken, "--to", "official"], "invalid JSON"),
        "shard-size": ([JANUS_DIR, "--to", "official", "--max-shard-size", "12XB"], "not a size"),
    }


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, capsys):
    for case, (argv, needle) in _bad_cases(tmp_path).items():
        out = tmp_path / f"out-{case}"
        if "--out" not in argv:
            argv = argv + ["--out", out]
        before = sorted(os.listdir(tmp_path))
        rc, cap = _run(argv, capsys)
        lines = cap.err.strip().splitlines()
        assert rc == 2, (case, cap.err)
        assert len(lines) == 1 and lines[0].startswith("janusflow-export: error:") and needle in lines[0], (
            case,
            cap.err,
        )
        assert not out.exists() and sorted(os.listdir(tmp_path)) == before, case
        assert not os.listdir(tmp_path / "exists")


def test_entry_point_is_installed():
    from importlib.metadata import entry_points

    eps = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert eps.get("janusflow-export") == "convert.export:main"
