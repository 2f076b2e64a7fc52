"""Every published weight layout read without torch and without executing anything: torch.save zips
(one file or sharded + index), sharded safetensors + index, bit-identical to the safetensors source;
malicious/malformed pickles and bad index files refused with one clear line (and nothing executed)."""

import json
import os
import pickle
import re
import struct
import subprocess
import zipfile

import ml_dtypes
import numpy as np
import pytest
from conftest import FIXTURES

from janusflow_jax.safetensors_io import SafetensorsFile, WeightFileError, save_safetensors
from janusflow_jax.torch_pickle import ALLOWED_GLOBALS, TorchPickleFile
from janusflow_jax.weight_files import candidates, open_weights

PRO_TINY = FIXTURES / "janus-pro-tiny" / "model.safetensors"


@pytest.fixture(scope="module")
def source() -> dict:
    f = SafetensorsFile(str(PRO_TINY))
    return {k: np.array(f.get(k)) for k in f.keys()}  # noqa: SIM118


def _assert_identical(w, ref: dict, *, copies: bool = True) -> None:
    """Same keys; each tensor the same dtype, shape and raw bytes; a C-contiguous array owning its data."""
    assert sorted(w.keys()) == sorted(ref)
    for k, r in ref.items():
        a = w.get(k)
        assert w.shape(k) == r.shape and w.dtype(k) == r.dtype, k
        assert a.dtype == r.dtype and a.shape == r.shape, k
        assert a.tobytes() == r.tobytes(), k
        if copies:
            assert type(a) is np.ndarray and a.flags.c_contiguous and a.flags.owndata, k


def _t2np(t) -> np.ndarray:
    """A torch tensor's values as numpy, bf16 bit-exact (through int16) as ml_dtypes.bfloat16."""
    import torch

    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def _shard_index(folder, parts: list[dict], suffix: str, write, prefix: str) -> dict:
    """Write `parts` as shards `{prefix}-0000i-of-0000n{suffix}` with `write(path, tensors)`; return weight_map."""
    wmap = {}
    for i, part in enumerate(parts, 1):
        name = f"{prefix}-{i:05d}-of-{len(parts):05d}{suffix}"
        write(str(folder / name), part)
        wmap.update({k: name for k in part})
    return wmap


def _write_index(path, wmap: dict, total: int = 0) -> None:
    path.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wmap}))


# --- good paths: the fixture state dict in every layout --------------------------------------------


@pytest.fixture(scope="module")
def pickles(source, tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("pickles")
    sd = {k: torch.from_numpy(v.copy()) for k, v in source.items()}
    (root / "single").mkdir()
    torch.save(sd, root / "single" / "pytorch_model.bin")
    keys = list(sd)
    (root / "sharded").mkdir()
    wmap = _shard_index(
        root / "sharded",
        [{k: sd[k] for k in keys[:150]}, {k: sd[k] for k in keys[150:]}],
        ".bin",
        lambda path, part: torch.save(part, path),
        "pytorch_model",
    )
    _write_index(root / "sharded" / "pytorch_model.bin.index.json", wmap)
    sd16 = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    (root / "bf16").mkdir()
    torch.save(sd16, root / "bf16" / "pytorch_model.bin")
    return {"root": root, "bf16": {k: _t2np(v) for k, v in sd16.items()}}


@pytest.mark.torch
def test_single_pytorch_model_bin_is_bit_identical(pickles, source):
    w = open_weights(str(pickles["root"] / "single"))
    assert len(w) == len(source) == 328
    assert w.files == [str(pickles["root"] / "single" / "pytorch_model.bin")]
    assert w.describe() == "pytorch_model.bin (torch.save zip, 328 tensors)"
    _assert_identical(w, source)


@pytest.mark.torch
def test_sharded_pytorch_model_bin_is_bit_identical(pickles, source):
    folder = pickles["root"] / "sharded"
    w = open_weights(str(folder))
    assert w.files == [
        str(folder / "pytorch_model.bin.index.json"),
        str(folder / "pytorch_model-00001-of-00002.bin"),
        str(folder / "pytorch_model-00002-of-00002.bin"),
    ]
    assert w.describe() == "pytorch_model.bin.index.json (sharded torch.save zip, 2 shards, 328 tensors)"
    _assert_identical(w, source)


@pytest.mark.torch
def test_bfloat16_pickle_is_bit_identical(pickles, source):
    w = open_weights(str(pickles["root"] / "bf16" / "pytorch_model.bin"))  # a direct file path
    assert {w.dtype(k) for k in w.keys()}  # noqa: SIM118 == {np.dtype(ml_dtypes.bfloat16)}
    _assert_identical(w, pickles["bf16"])
    # torch and ml_dtypes both round to nearest even: the same bits as casting the source ourselves
    _assert_identical(w, {k: v.astype(ml_dtypes.bfloat16) for k, v in source.items()})


@pytest.mark.torch
def test_strided_offset_and_shared_storage_tensors(source, tmp_path):
    import torch

    k2 = next(k for k, v in source.items() if v.ndim == 2 and min(v.shape) > 4)
    W = source[k2]
    base = torch.from_numpy(W.copy())
    b16 = base.to(torch.bfloat16)
    ints = torch.arange(24, dtype=torch.int64).reshape(2, 3, 4)
    views = {
        "w": base,
        "wt": base.t(),
        "rows": base[1:3],
        "cols": base[:, 1::2],
        "elem": base[2, 3],
        "tail": base.view(-1)[5:],
        "empty": base[:0],
        "b16t": b16.t()[1:, ::3],
        "perm": ints.permute(2, 0, 1),
        "mask": torch.tensor([True, False, True]),
        "half": base[:2, :3].to(torch.float16).t(),
    }
    assert not views["wt"].is_contiguous() and views["tail"].storage_offset() == 5
    path = tmp_path / "views.bin"
    torch.save(views, path)
    with zipfile.ZipFile(path) as z:  # saved as-is: base, b16, ints, mask, half -> 5 storages
        assert len([n for n in z.namelist() if "/data/" in n]) == 5
    expect = {
        "w": W,
        "wt": W.T,
        "rows": W[1:3],
        "cols": W[:, 1::2],
        "elem": W[2, 3],
        "tail": W.reshape(-1)[5:],
        "empty": W[:0],
        "b16t": W.astype(ml_dtypes.bfloat16).T[1:, ::3],
        "perm": np.arange(24, dtype=np.int64).reshape(2, 3, 4).transpose(2, 0, 1),
        "mask": np.array([True, False, True]),
        "half": W[:2, :3].astype(np.float16).T,
    }
    expect = {k: np.array(v, order="C") for k, v in expect.items()}
    for k, v in views.items():  # the expectations are right: torch agrees with them
        assert _t2np(v).tobytes() == expect[k].tobytes(), k
    _assert_identical(TorchPickleFile(str(path)), expect)


@pytest.mark.torch
def test_state_dict_of_a_module_and_a_wrapper(tmp_path):
    import torch

    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))  # OrderedDict with _metadata
    ref = {k: _t2np(v) for k, v in m.state_dict().items()}
    torch.save(m.state_dict(), tmp_path / "sd.bin")
    _assert_identical(TorchPickleFile(str(tmp_path / "sd.bin")), ref)
    params = dict(m.named_parameters())  # nn.Parameter -> _rebuild_parameter
    torch.save(params, tmp_path / "params.bin")
    _assert_identical(TorchPickleFile(str(tmp_path / "params.bin")), {k: _t2np(v) for k, v in params.items()})
    torch.save({"state_dict": m.state_dict(), "epoch": 3}, tmp_path / "wrapped.bin")
    w = TorchPickleFile(str(tmp_path / "wrapped.bin"))
    assert w.wrapper == "state_dict" and "unwrapped from 'state_dict'" in w.describe()
    _assert_identical(w, ref)
    torch.save({"model": m.state_dict(), "state_dict": m.state_dict()}, tmp_path / "ambiguous.bin")
    with pytest.raises(WeightFileError, match=r"ambiguous\.bin: entry 'model' is an OrderedDict, not a tensor"):
        TorchPickleFile(str(tmp_path / "ambiguous.bin"))
    torch.save({"w": torch.ones(2), "step": 7}, tmp_path / "int.bin")
    with pytest.raises(WeightFileError, match=r"int\.bin: entry 'step' is an int, not a tensor"):
        TorchPickleFile(str(tmp_path / "int.bin"))


def _rezip(src, dst, *, compression=zipfile.ZIP_STORED, edit=lambda name, data: data) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)), compression)


@pytest.mark.torch
def test_compressed_members_and_big_endian_archives(tmp_path):
    import torch

    sd = {"f": torch.randn(5, 7), "b": torch.randn(3, 4).to(torch.bfloat16).t(), "i": torch.arange(6).view(2, 3)}
    ref = {k: _t2np(v) for k, v in sd.items()}
    torch.save(sd, tmp_path / "x.bin")
    _rezip(tmp_path / "x.bin", tmp_path / "deflated.bin", compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(tmp_path / "deflated.bin") as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    _assert_identical(TorchPickleFile(str(tmp_path / "deflated.bin")), ref)

    itemsize = {"0": 4, "1": 2, "2": 8}  # storage keys in save order: f (float32), b (bf16), i (int64)

    def to_big(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        key = name.rsplit("/data/", 1)[-1] if "/data/" in name else None
        if key in itemsize:
            return np.frombuffer(data, f"<u{itemsize[key]}").astype(f">u{itemsize[key]}").tobytes()
        return data

    _rezip(tmp_path / "x.bin", tmp_path / "big.bin", edit=to_big)
    _assert_identical(TorchPickleFile(str(tmp_path / "big.bin")), ref)


def test_sharded_safetensors_is_bit_identical(source, tmp_path):
    keys = sorted(source)
    parts = [{k: source[k] for k in keys[i::3]} for i in range(3)]
    wmap = _shard_index(tmp_path, parts, ".safetensors", save_safetensors, "model")
    _write_index(tmp_path / "model.safetensors.index.json", wmap)
    w = open_weights(str(tmp_path))
    assert w.describe() == "model.safetensors.index.json (sharded safetensors, 3 shards, 328 tensors)"
    assert w.files[0].endswith("model.safetensors.index.json") and len(w.files) == 4
    assert w.metadata == {"total_size": 0}
    _assert_identical(w, source, copies=False)
    single = open_weights(str(PRO_TINY.parent))
    assert single.describe() == "model.safetensors (safetensors, 328 tensors)" and single.files == [str(PRO_TINY)]


# --- hand-crafted pickles in the torch zip layout --------------------------------------------------


def _g(mod, name):
    return b"c" + f"{mod}\n{name}\n".encode()


def _s(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(n):
    return b"J" + struct.pack("<i", n)


def _t(*xs):
    return b"(" + b"".join(xs) + b"t"


_OD = _g("collections", "OrderedDict") + b")R"


def _pid(key, numel, stype="FloatStorage", tag="storage"):
    return _t(_s(tag), _g("torch", stype), _s(key), _s("cpu"), _i(numel)) + b"Q"


def _tensor(pid, offset, size, stride, *extra, fn="_rebuild_tensor_v2"):
    args = (pid, _i(offset), _t(*map(_i, size)), _t(*map(_i, stride)))
    if fn == "_rebuild_tensor_v2":
        args += (b"\x89", _OD) + extra
    return _g("torch._utils", fn) + _t(*args) + b"R"


def _dict(*items):
    return b"\x80\x02" + _OD + b"(" + b"".join(_s(k) + v for k, v in items) + b"u."


def _torch_zip(path, pkl: bytes, storages: dict | None = None, archive: str = "archive") -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{archive}/data.pkl", pkl)
        z.writestr(f"{archive}/byteorder", "little")
        for k, b in (storages or {}).items():
            z.writestr(f"{archive}/data/{k}", b)
        z.writestr(f"{archive}/version", "3\n")
    return str(path)


_ARANGE12 = {"0": np.arange(12, dtype=np.float32).tobytes()}


def test_crafted_state_dict_reads_offsets_and_strides(tmp_path):
    pkl = _dict(
        ("a", _tensor(_pid("0", 12), 0, (3, 4), (4, 1))),
        ("t", _tensor(_pid("0", 12), 0, (4, 3), (1, 4))),
        ("s", _tensor(_pid("0", 12), 5, (2,), (3,))),
        ("old", _tensor(_pid("0", 12), 11, (), (), fn="_rebuild_tensor")),
        (
            "p",
            _g("torch._utils", "_rebuild_parameter") + _t(_tensor(_pid("0", 12), 1, (2,), (1,)), b"\x88", _OD) + b"R",
        ),
    )
    f = TorchPickleFile(_torch_zip(tmp_path / "ok.bin", pkl, _ARANGE12, archive="some_name"))
    x = np.arange(12, dtype=np.float32)
    ref = {"a": x.reshape(3, 4), "t": x.reshape(3, 4).T, "s": x[5:11:3], "old": x[11], "p": x[1:3]}
    _assert_identical(f, {k: np.array(v, order="C") for k, v in ref.items()})
    assert f.archive == "some_name"


_BAD_TENSORS = {
    "extent": (
        _dict(("x", _tensor(_pid("0", 12), 10, (3,), (1,)))),
        r"tensor 'x' \(shape \(3,\), stride \(1,\), offset 10\) needs 13 elements but its storage '0' holds 12",
    ),
    "stride-extent": (
        _dict(("x", _tensor(_pid("0", 12), 0, (3, 2), (5, 1)))),
        r"tensor 'x' \(shape \(3, 2\), stride \(5, 1\), offset 0\) needs 12 elements",  # fits exactly: see below
    ),
    "member-size": (
        _dict(("x", _tensor(_pid("0", 16), 0, (4,), (1,)))),
        r"storage '0' of tensor 'x': archive member has 48 B but data.pkl declares 16 x torch.FloatStorage = 64 B",
    ),
    "missing-storage": (
        _dict(("x", _tensor(_pid("7", 12), 0, (4,), (1,)))),
        r"tensor 'x' refers to storage '7', which is missing from the archive \(no member 'archive/data/7'\)",
    ),
    "persistent-id": (
        _dict(("x", _tensor(_pid("0", 12, tag="module"), 0, (4,), (1,)))),
        r"unsupported persistent id \('module', torch.FloatStorage, '0', 'cpu', 12\) in data.pkl",
    ),
    "not-a-storage": (
        _dict(("x", _tensor(_s("0"), 0, (4,), (1,)))),
        r"_rebuild_tensor_v2 on a str, not a storage record",
    ),
    "two-dtypes": (
        _dict(("x", _tensor(_pid("0", 12), 0, (4,), (1,))), ("y", _tensor(_pid("0", 12, "IntStorage"), 0, (4,), (1,)))),
        r"storage '0' is declared both as 12 x torch.FloatStorage and as 12 x torch.IntStorage",
    ),
    "metadata": (
        _dict(("x", _tensor(_pid("0", 12), 0, (4,), (1,), b"}(" + _s("neg") + b"\x88u"))),
        r"tensor 'x' has tensor metadata \{'neg': True\} \(not supported\)",
    ),
    "storage-dtype": (
        _dict(("x", _tensor(_pid("0", 12, "ComplexFloatStorage"), 0, (4,), (1,)))),
        r"refused global 'torch.ComplexFloatStorage' in data.pkl",
    ),
    "call-a-storage-class": (
        b"\x80\x02" + _g("torch", "FloatStorage") + b")R.",
        r"corrupt data.pkl \(TypeError: '_StorageType' object is not callable\)",
    ),
    "build-on-a-tensor": (
        _dict(("x", _tensor(_pid("0", 12), 0, (4,), (1,)) + b"}(" + _s("a") + _i(1) + b"ub")),
        r"corrupt data.pkl \(TypeError: a tensor cannot take pickled state",
    ),
    "top-level-list": (pickle.dumps([1, 2], protocol=2), r"top-level object is a list, not a state dict"),
    "garbage-pickle": (b"\x80\x02\xffnot a pickle", r"corrupt data.pkl \(UnpicklingError"),
}


@pytest.mark.parametrize("case", sorted(_BAD_TENSORS))
def test_malformed_state_dicts_are_refused(case, tmp_path):
    pkl, msg = _BAD_TENSORS[case]
    if case == "stride-extent":  # (3, 2) with stride (5, 1) ends at element 11: fits 12, not 11
        TorchPickleFile(_torch_zip(tmp_path / "fits.bin", pkl, _ARANGE12))
        pkl = pkl.replace(_i(12), _i(11))
        storages = {"0": _ARANGE12["0"][:44]}
        msg = msg.replace("12 elements", r"12 elements but its storage '0' holds 11")
    else:
        storages = _ARANGE12
    path = _torch_zip(tmp_path / "bad.bin", pkl, storages)
    with pytest.raises(WeightFileError, match=f"^{re.escape(path)}: {msg}") as e:
        TorchPickleFile(path)
    assert "\n" not in str(e.value)


def _evil_reduce(fn, *args):
    class Evil:
        def __reduce__(self):
            return fn, args

    return Evil()


def _call(mod, name, *args):
    return b"\x80\x02" + _g(mod, name) + _t(*map(_s, args)) + b"R."


_PAYLOADS = {  # name -> (refused global, marker -> pickle that would create the marker)
    "os.system": ("os.system", lambda m: _call("os", "system", f"touch {m}")),
    "posix.system": ("posix.system", lambda m: pickle.dumps(_evil_reduce(os.system, f"touch {m}"), protocol=2)),
    "posix.system-proto4": (
        "posix.system",
        lambda m: pickle.dumps(_evil_reduce(os.system, f"touch {m}"), protocol=4),  # STACK_GLOBAL
    ),
    "builtins.exec": ("builtins.exec", lambda m: _call("builtins", "exec", f"open({str(m)!r}, 'w').close()")),
    "builtins.eval": ("builtins.eval", lambda m: _call("builtins", "eval", f"__import__('os').system('touch {m}')")),
    "builtins.open": ("builtins.open", lambda m: _call("builtins", "open", str(m), "w")),
    "__builtin__.eval": (
        "__builtin__.eval",
        lambda m: _call("__builtin__", "eval", f"__import__('os').system('touch {m}')"),
    ),
    "subprocess.Popen": (
        "subprocess.Popen",
        lambda m: pickle.dumps(_evil_reduce(subprocess.Popen, ["touch", str(m)]), protocol=4),
    ),
    "inside-a-state-dict": (
        "os.system",
        lambda m: _dict(
            ("evil", _g("os", "system") + _t(_s(f"touch {m}")) + b"R"),
            ("x", _tensor(_pid("0", 12), 0, (4,), (1,))),
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(_PAYLOADS))
def test_payloads_are_live_for_plain_pickle(case, tmp_path):
    """Control: plain `pickle.loads` runs each payload (so the refusal test below can fail)."""
    marker = tmp_path / "marker"
    try:
        obj = pickle.loads(_PAYLOADS[case][1](marker))
        for method in ("wait", "close"):
            getattr(obj, method, lambda: None)()
    except pickle.UnpicklingError:  # "inside-a-state-dict": no persistent_load, after the payload ran
        pass
    assert marker.exists()


@pytest.mark.parametrize("case", sorted(_PAYLOADS))
def test_malicious_pickles_are_refused_and_nothing_runs(case, tmp_path):
    name, payload = _PAYLOADS[case]
    marker = tmp_path / "marker"
    path = _torch_zip(tmp_path / "evil.bin", payload(marker), _ARANGE12)
    with pytest.raises(
        WeightFileError, match=f"^{re.escape(path)}: refused global '{re.escape(name)}' in data.pkl"
    ) as e:
        open_weights(path)
    assert "nothing from the file was executed" in str(e.value) and "\n" not in str(e.value)
    raw = tmp_path / "legacy_evil.bin"  # the same payload as a raw (legacy, non-zip) pickle file
    raw.write_bytes(payload(marker))
    with pytest.raises(WeightFileError, match=r"legacy \(pre-1\.6, non-zip\) torch pickle"):
        TorchPickleFile(str(raw))
    assert not marker.exists()


@pytest.mark.parametrize(
    "qual,pkl",
    [
        ("collections.Counter", b"\x80\x02" + _g("collections", "Counter") + b")R."),
        ("numpy._core.multiarray._reconstruct", pickle.dumps({"x": np.zeros(2)}, protocol=2)),
        ("torch._tensor._rebuild_from_type_v2", _call("torch._tensor", "_rebuild_from_type_v2")),
        ("torch.nn.parameter.Parameter", _call("torch.nn.parameter", "Parameter")),
        ("builtins.getattr", _call("builtins", "getattr")),
        ("torch.UntypedStorage", _dict(("x", _tensor(_pid("0", 48, "UntypedStorage"), 0, (4,), (1,))))),
    ],
)
def test_globals_outside_the_allow_list_are_refused_by_name(qual, pkl, tmp_path):
    if qual.startswith("numpy"):  # numpy 1 pickles numpy.core.multiarray._reconstruct, numpy 2 numpy._core...
        qual = ".".join(x.decode() for x in re.search(rb"c(numpy[\w.]*)\n(\w+)\n", pkl).groups())
        assert qual.endswith("multiarray._reconstruct")
    assert qual not in ALLOWED_GLOBALS
    path = _torch_zip(tmp_path / "x.bin", pkl, _ARANGE12)
    with pytest.raises(WeightFileError, match=f"^{re.escape(path)}: refused global '{re.escape(qual)}' in data.pkl"):
        TorchPickleFile(path)


def test_allow_list_is_exactly_a_state_dict():
    storages = {
        f"torch.{t}Storage"
        for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
    }
    rebuild = {f"torch._utils._rebuild_{n}" for n in ("tensor", "tensor_v2", "parameter", "parameter_with_state")}
    assert ALLOWED_GLOBALS == {"collections.OrderedDict"} | storages | rebuild


@pytest.mark.torch
def test_genuine_archive_with_a_replaced_data_pkl_is_refused(tmp_path):
    import torch

    torch.save({"w": torch.ones(3)}, tmp_path / "real.bin")
    marker = tmp_path / "marker"
    evil = _call("os", "system", f"touch {marker}")
    _rezip(tmp_path / "real.bin", tmp_path / "evil.bin", edit=lambda n, d: evil if n.endswith("/data.pkl") else d)
    with pytest.raises(WeightFileError, match=r"evil\.bin: refused global 'os.system' in data.pkl"):
        open_weights(str(tmp_path / "evil.bin"))
    assert not marker.exists()


@pytest.mark.torch
def test_truncated_legacy_and_non_torch_files_are_refused(tmp_path):
    import torch

    sd = {"w": torch.randn(64, 64)}
    torch.save(sd, tmp_path / "real.bin")
    data = (tmp_path / "real.bin").read_bytes()
    (tmp_path / "half.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=r"half\.bin: truncated or corrupt zip archive"):
        TorchPickleFile(str(tmp_path / "half.bin"))
    torch.save(sd, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(WeightFileError, match=r"legacy\.bin: legacy \(pre-1\.6, non-zip\) torch pickle; not read"):
        TorchPickleFile(str(tmp_path / "legacy.bin"))
    (tmp_path / "list.bin").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(WeightFileError, match=r"list\.bin: legacy \(pre-1\.6, non-zip\) torch pickle"):
        TorchPickleFile(str(tmp_path / "list.bin"))
    (tmp_path / "noise.bin").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(WeightFileError, match=r"noise\.bin: not a torch.save zip checkpoint \(starts with b'GGUF'\)"):
        TorchPickleFile(str(tmp_path / "noise.bin"))
    with zipfile.ZipFile(tmp_path / "nopkl.bin", "w") as z:
        z.writestr("archive/data/0", b"\0" * 4)
    with pytest.raises(WeightFileError, match=r"nopkl\.bin: no <archive>/data.pkl member; not a torch.save checkpoint"):
        TorchPickleFile(str(tmp_path / "nopkl.bin"))
    with pytest.raises(WeightFileError, match=r"absent\.bin: file not found"):
        TorchPickleFile(str(tmp_path / "absent.bin"))


# --- index files -------------------------------------------------------------------------------------

_SHARD1, _SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def _sharded(folder, parts=None) -> dict:
    folder.mkdir(exist_ok=True)
    parts = parts or [{"a": np.ones(2, np.float32), "b": np.arange(3, dtype=np.int64)}, {"c": np.zeros((2, 2))}]
    return _shard_index(folder, parts, ".safetensors", save_safetensors, "model")


def _bad_index(tmp_path, case):
    """(folder, expected message) for each bad index case."""
    d = tmp_path / "ckpt"
    wmap = _sharded(d)
    idx = d / "model.safetensors.index.json"
    save_safetensors(str(tmp_path / "outside.safetensors"), {"c": np.zeros((2, 2))})
    if case == "missing-shard":
        wmap["c"] = "model-00003-of-00003.safetensors"
        msg = r"shard 'model-00003-of-00003.safetensors' \(listed for 'c'\) not found"
    elif case == "unlisted-tensor":
        del wmap["b"]
        msg = f"shard '{_SHARD1}' holds tensor 'b', which the index does not list"
    elif case == "listed-in-the-wrong-shard":
        wmap["b"] = _SHARD2
        msg = f"tensor 'b' is listed for shard '{_SHARD2}', which does not contain it \\(it is in '{_SHARD1}'\\)"
    elif case == "listed-but-absent":
        wmap["z"] = _SHARD2
        msg = f"tensor 'z' is listed for shard '{_SHARD2}', which does not contain it$"
    elif case == "in-two-shards":
        save_safetensors(str(d / _SHARD2), {"c": np.zeros((2, 2)), "b": np.arange(3, dtype=np.int64)})
        msg = f"tensor 'b' is stored in two shards, '{_SHARD1}' and '{_SHARD2}'"
    elif case == "dot-dot":
        wmap["c"] = "../outside.safetensors"
        msg = r"shard '../outside.safetensors' \(for 'c'\) escapes the folder .*; refused"
    elif case == "absolute":
        wmap["c"] = str(tmp_path / "outside.safetensors")
        msg = r"shard '/.*/outside.safetensors' \(for 'c'\) is an absolute path; refused"
    elif case == "symlink-out":
        os.symlink(tmp_path / "outside.safetensors", d / "link.safetensors")
        os.remove(d / _SHARD2)
        wmap["c"] = "link.safetensors"
        msg = r"shard 'link.safetensors' resolves to .*/outside.safetensors, outside the folder .*; refused"
    elif case == "wrong-shard-type":
        wmap["c"] = "pytorch_model.bin"
        msg = r"shard 'pytorch_model.bin' \(for 'c'\) does not match the index type \(sharded safetensors\)"
    elif case == "invalid-json":
        idx.write_text('{"weight_map": {"a": ')
        return d, "invalid JSON"
    elif case == "no-weight-map":
        idx.write_text(json.dumps({"metadata": {}, "weights": wmap}))
        return d, 'not a checkpoint index \\(no "weight_map" object\\)'
    elif case == "listed-twice":
        idx.write_text(f'{{"weight_map": {{"a": "{_SHARD1}", "b": "{_SHARD1}", "c": "{_SHARD2}", "a": "{_SHARD2}"}}}}')
        return d, "key 'a' appears twice in the index"
    elif case == "ok":
        msg = None
    _write_index(idx, wmap)
    return d, msg


_INDEX_CASES = [
    "missing-shard",
    "unlisted-tensor",
    "listed-in-the-wrong-shard",
    "listed-but-absent",
    "in-two-shards",
    "dot-dot",
    "absolute",
    "symlink-out",
    "wrong-shard-type",
    "invalid-json",
    "no-weight-map",
    "listed-twice",
]


def test_good_index_opens(tmp_path):
    d, _ = _bad_index(tmp_path, "ok")
    w = open_weights(str(d))
    assert w.keys() == ["a", "b", "c"] and w.get("b").tolist() == [0, 1, 2] and w.dtype("c") == np.float64


@pytest.mark.parametrize("case", _INDEX_CASES)
def test_bad_index_files_are_refused(case, tmp_path):
    d, msg = _bad_index(tmp_path, case)
    idx = d / "model.safetensors.index.json"
    with pytest.raises(WeightFileError, match=f"^{re.escape(str(idx))}: {msg}") as e:
        open_weights(str(d))
    assert "\n" not in str(e.value)


def test_index_of_pickles_is_validated_the_same_way(tmp_path):
    x = _tensor(_pid("0", 12), 0, (4,), (1,))
    _torch_zip(tmp_path / "pytorch_model-00001-of-00002.bin", _dict(("a", x), ("b", x)), _ARANGE12)
    _torch_zip(tmp_path / "pytorch_model-00002-of-00002.bin", _dict(("c", x)), _ARANGE12)
    wmap = {"a": "pytorch_model-00001-of-00002.bin", "c": "pytorch_model-00002-of-00002.bin"}
    _write_index(tmp_path / "pytorch_model.bin.index.json", wmap)
    with pytest.raises(WeightFileError, match="shard 'pytorch_model-00001-of-00002.bin' holds tensor 'b', which the"):
        open_weights(str(tmp_path))
    _write_index(tmp_path / "pytorch_model.bin.index.json", dict(wmap, b="pytorch_model-00001-of-00002.bin"))
    w = open_weights(str(tmp_path))
    assert w.keys() == ["a", "b", "c"] and w.get("c").tolist() == [0, 1, 2, 3]


def test_hugging_face_cache_snapshot_symlinks_are_followed(tmp_path):
    """HF cache snapshots are symlinks into `<repo>/blobs`: the one place outside the folder allowed."""
    repo = tmp_path / "models--deepseek-ai--Janus-Pro-7B"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abc"
    repo.mkdir()
    wmap = _sharded(blobs)
    snap.mkdir(parents=True)
    for name in set(wmap.values()):
        (blobs / name).rename(blobs / f"sha-{name}")
        os.symlink(f"../../blobs/sha-{name}", snap / name)
    _write_index(snap / "model.safetensors.index.json", wmap)
    assert open_weights(str(snap)).get("a").tolist() == [1.0, 1.0]
    (snap / "elsewhere").mkdir()  # ... but not into any other folder
    os.symlink(blobs / f"sha-{_SHARD2}", snap / "elsewhere" / "s.safetensors")
    _write_index(snap / "model.safetensors.index.json", dict(wmap, c="elsewhere/s.safetensors"))
    assert open_weights(str(snap)).get("c").shape == (2, 2)  # inside the folder, into blobs: fine
    os.symlink(tmp_path, snap / "up")
    save_safetensors(str(tmp_path / "s.safetensors"), {"c": np.zeros((2, 2))})
    _write_index(snap / "model.safetensors.index.json", dict(wmap, c="up/s.safetensors"))
    with pytest.raises(WeightFileError, match="resolves to .*, outside the folder"):
        open_weights(str(snap))


# --- resolution ---------------------------------------------------------------------------------------


def test_resolution_order_and_names(tmp_path):
    one = _tensor(_pid("0", 12), 0, (1,), (1,))
    layouts = {
        "model.safetensors": lambda: save_safetensors(str(tmp_path / "model.safetensors"), {"st": np.ones(1)}),
        "model.safetensors.index.json": lambda: _write_index(
            tmp_path / "model.safetensors.index.json", _sharded(tmp_path, [{"sts": np.ones(1)}])
        ),
        "pytorch_model.bin": lambda: _torch_zip(tmp_path / "pytorch_model.bin", _dict(("pt", one)), _ARANGE12),
        "pytorch_model.bin.index.json": lambda: (
            _torch_zip(tmp_path / "pytorch_model-00001-of-00001.bin", _dict(("pts", one)), _ARANGE12),
            _write_index(tmp_path / "pytorch_model.bin.index.json", {"pts": "pytorch_model-00001-of-00001.bin"}),
        ),
    }
    assert list(layouts) == candidates("model")
    looked = re.escape(f"{tmp_path}: no weights found (looked for {', '.join(layouts)})")
    with pytest.raises(WeightFileError, match=f"^{looked}$"):
        open_weights(str(tmp_path))
    for make in layouts.values():
        make()
    for name, key in zip(list(layouts), ["st", "sts", "pt", "pts"]):
        w = open_weights(str(tmp_path))
        assert w.path == str(tmp_path / name) and w.keys() == [key]
        os.remove(tmp_path / name)
    assert candidates("diffusion_pytorch_model") == [
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.bin.index.json",
    ]
    _torch_zip(tmp_path / "diffusion_pytorch_model.bin", _dict(("vae", one)), _ARANGE12)
    assert open_weights(str(tmp_path), "diffusion_pytorch_model").keys() == ["vae"]
    with pytest.raises(WeightFileError, match="no weights found"):
        open_weights(str(tmp_path))  # stem "model" does not pick up the VAE's file
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    with pytest.raises(WeightFileError, match=r"w\.gguf: unknown weight file type"):
        open_weights(str(tmp_path / "w.gguf"))
    with pytest.raises(WeightFileError, match=r"nowhere: no such file or folder"):
        open_weights(str(tmp_path / "nowhere"))
    with pytest.raises(WeightFileError, match=r"pickled PyTorch weights are never loaded"):
        SafetensorsFile(str(tmp_path / "diffusion_pytorch_model.bin"))  # SafetensorsFile still refuses pickles
