"""Test setup: 8 simulated CPU devices, float32, highest matmul precision (set before jax import).

Tests compile far more than they run, so two XLA:CPU settings here trade run time for compile time.
The LLVM backend runs at optimization level 0: about half the compile time, and without fast-math the
float semantics (what the parity tests check) are the same. The MLIR fusion emitters are off (the
classic elemental emitters instead): the tiny stage-3 train step then compiles in 10 s instead of
22 s, with the same loss and gradient norm to the last bit (0.25 s a step instead of 0.20). Benchmarks and real runs keep XLA's defaults. Subprocess tests pass `FAST_COMPILE` on too.
"""

import os

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY_DIR = FIXTURES / "janusflow-tiny"
JANUS_DIR = FIXTURES / "janus-pro-tiny"


def rel_err(ours, ref) -> float:
    """max |ours − ref| / max |ref| in float64."""
    a = np.asarray(ours, np.float64)
    b = np.asarray(ref, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def nchw_to_nhwc(x):
    x = np.asarray(x)
    return np.moveaxis(x, -3, -1)


# The longest modules (minutes each on a 2-core machine: the training runs and the train-step
# compiles) go first, longest first, so the two xdist workers (pyproject addopts, --dist loadfile)
# finish together instead of one of them starting a long module last. (`--no-loadscope-reorder` keeps
# this order: by default xdist reorders files by their number of tests, which put the one-test
# shapes-recipe module last.)
_LONGEST_FIRST = (
    "test_train_run.py",
    "test_train_core.py",
    "test_geneval_train.py",
    "test_janus_train.py",
    "test_new_user.py",
    "test_batch_sampling.py",
    "test_vq_train.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


_SESSION_MODELS: list = []  # model objects of session fixtures (their `_run` keeps compiled programs)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every compiled program when a test module ends. Each XLA:CPU executable keeps several
    memory mappings of JIT code until it is freed; the whole suite in one process compiles thousands
    of programs, and without this it passed the kernel's 65,530 mappings per process (vm.max_map_count)
    about halfway through — XLA then crashed inside a compile (SIGSEGV / abort). Modules rarely share
    a program, so the cost is a few recompiles."""
    yield
    jax.clear_caches()
    for m in _SESSION_MODELS:
        m.__dict__.pop("_compiled", None)


@pytest.fixture(scope="session")
def tiny_dir() -> pathlib.Path:
    return TINY_DIR


@pytest.fixture(scope="session")
def tiny_model():
    """The golden-fixture model loaded through the real loader (HF folder, float32)."""
    import janusflow_jax

    m = janusflow_jax.load(str(TINY_DIR), dtype="float32")
    _SESSION_MODELS.append(m)
    return m


@pytest.fixture(scope="session")
def npz():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = dict(np.load(TINY_DIR / f"{name}.npz"))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def janus_model():
    """The Janus-Pro golden-fixture model loaded through the real loader (official folder, float32)."""
    import janusflow_jax

    m = janusflow_jax.load(str(JANUS_DIR), dtype="float32")
    _SESSION_MODELS.append(m)
    return m


@pytest.fixture(scope="session")
def janus_npz():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = dict(np.load(JANUS_DIR / f"{name}.npz"))
        return cache[name]

    return get
