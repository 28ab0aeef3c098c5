"""The NumPy embedding (examples/embed/numpy): gptcore's ops on numpy arrays through ctypes, no torch."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from embed_checks import EXAMPLES, installed

from gptcore import native

SCRIPT = EXAMPLES / "numpy" / "gptcore_numpy.py"


@pytest.fixture(scope="module")
def gptcore_numpy():
    installed(native.get_library)
    spec = importlib.util.spec_from_file_location("gptcore_numpy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_checks_every_op_without_importing_torch(gptcore_numpy):
    # Its own process: this one has torch (conftest); the script asserts it never imports it.
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("max relative error") == 3


@pytest.mark.parametrize("shape", [(1, 1), (3, 7, 33), (2, 1024)])
def test_layer_norm_odd_shapes(gptcore_numpy, shape):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal(shape), rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(gptcore_numpy.layer_norm(x, w, b), want, rtol=1e-5, atol=1e-5)


def test_a_bad_call_raises_the_library_message(gptcore_numpy):
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(RuntimeError, match="weight"):
        gptcore_numpy.layer_norm(x, np.ones(7, np.float32), np.zeros(8, np.float32))
    with pytest.raises(TypeError, match="contiguous"):
        gptcore_numpy._view(np.zeros((4, 4), np.float32)[:, ::2])
