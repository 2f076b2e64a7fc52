"""`janusflow-convert` on every published layout of the same Janus weights gives bit-identical
parameters (model.safetensors, sharded safetensors + index, pytorch_model.bin, sharded .bin + index),
and a malicious pickle stops it with exit 2, one clear line, no output folder, nothing executed."""

import json
import shutil

import numpy as np
import pytest

from conftest import JANUS_DIR
from janusflow_jax import checkpoint
from janusflow_jax.janus.model import read_folder
from janusflow_jax.safetensors_io import SafetensorsFile, save_safetensors
from janusflow_jax.weights import flatten_params

_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "processor_config.json", "preprocessor_config.json")  # fmt: skip


def _folder(root, name):
    d = root / name
    d.mkdir()
    for f in _FILES:
        shutil.copy(JANUS_DIR / f, d / f)
    return d


def _index(d, wmap, stem):
    (d / f"{stem}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("layouts")
    f = SafetensorsFile(str(JANUS_DIR / "model.safetensors"))
    tensors = {k: np.array(f.get(k)) for k in f.keys()}  # noqa: SIM118
    keys = sorted(tensors)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    out = {"safetensors": JANUS_DIR}
    d = out["sharded safetensors"] = _folder(root, "st_sharded")
    wmap = {}
    for i, part in enumerate(halves, 1):
        name = f"model-{i:05d}-of-00002.safetensors"
        save_safetensors(str(d / name), {k: tensors[k] for k in part})
        wmap.update(dict.fromkeys(part, name))
    _index(d, wmap, "model.safetensors")
    d = out["pytorch_model.bin"] = _folder(root, "bin")
    torch.save({k: torch.from_numpy(tensors[k].copy()) for k in keys}, d / "pytorch_model.bin")
    d = out["sharded bin"] = _folder(root, "bin_sharded")
    wmap = {}
    for i, part in enumerate(halves, 1):
        name = f"pytorch_model-{i:05d}-of-00002.bin"
        torch.save({k: torch.from_numpy(tensors[k].copy()) for k in part}, d / name)
        wmap.update(dict.fromkeys(part, name))
    _index(d, wmap, "pytorch_model.bin")
    return out


def _flat(tree):
    return {k: np.asarray(v) for k, v in flatten_params(tree).items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.torch
def test_every_layout_reads_bit_identically(layouts):
    ref = _flat(read_folder(str(layouts["safetensors"]))[1])
    for name in ("sharded safetensors", "pytorch_model.bin", "sharded bin"):
        _assert_same(_flat(read_folder(str(layouts[name]))[1]), ref)


@pytest.mark.torch
def test_convert_cli_on_sharded_pickles_equals_safetensors(layouts, tmp_path):
    from convert.torch_to_orbax import main

    for name in ("safetensors", "sharded bin"):
        assert main([str(layouts[name]), "--out", str(tmp_path / name), "--dtype", "float32"]) == 0
    a = _flat(checkpoint.restore_params(str(tmp_path / "safetensors")))
    b = _flat(checkpoint.restore_params(str(tmp_path / "sharded bin")))
    _assert_same(a, b)
    meta = checkpoint.read_metadata(str(tmp_path / "sharded bin"))
    assert meta["family"] == "janus"
    assert sum(p.endswith(".bin") for p in meta["sources"]) == 2 and any(
        p.endswith(".index.json") for p in meta["sources"]
    )


def _evil_bin(path, marker):
    """A torch.save-layout zip whose data.pkl calls os.system (would create `marker`)."""
    import zipfile

    pkl = b"\x80\x02cos\nsystem\n(X" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode()
    pkl += b"tR."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")


def test_malicious_pickle_stops_the_converter(tmp_path, capsys):
    from convert.torch_to_orbax import main

    d = _folder(tmp_path, "evil")
    marker = tmp_path / "marker"
    _evil_bin(d / "pytorch_model.bin", marker)
    out = tmp_path / "out"
    assert main([str(d), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused global 'os.system'" in err[0] and "pytorch_model.bin" in err[0], err
    assert not out.exists() and not marker.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]  # no half-written temp folder
