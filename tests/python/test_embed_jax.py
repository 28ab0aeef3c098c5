"""The JAX embedding (examples/embed/jax): gptcore's layer norm and attention as XLA FFI CPU custom
calls, built against the installed package and jaxlib's FFI headers, jit-compiled, against jax.numpy.
Skipped where jax is not installed (CI installs it with the `test` extra)."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from embed_checks import EXAMPLES, cmake_build, installed  # noqa: E402

from gptcore import native  # noqa: E402

SCRIPT = EXAMPLES / "jax" / "gptcore_jax.py"


@pytest.fixture(scope="module")
def handler_library(tmp_path_factory):
    """libgptcore_jax.so, built with the installed package's CMake config and jaxlib's FFI headers."""
    installed(native.get_library)
    build = cmake_build(
        EXAMPLES / "jax", tmp_path_factory.mktemp("embed-jax"), f"-DXLA_FFI_INCLUDE_DIR={jax.ffi.include_dir()}"
    )
    return build / "libgptcore_jax.so"


@pytest.fixture(scope="module")
def gptcore_jax(handler_library):
    spec = importlib.util.spec_from_file_location("gptcore_jax", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register(str(handler_library))
    return module


@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 97), (1, 1)])
def test_layer_norm_equals_jax_numpy(gptcore_jax, shape):
    keys = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(keys[0], shape)
    w, b = jax.random.normal(keys[1], shape[-1:]), jax.random.normal(keys[2], shape[-1:])
    got = gptcore_jax.gptcore_layer_norm(x, w, b)
    np.testing.assert_allclose(got, gptcore_jax.reference_layer_norm(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("t_q", "t_k", "d"), [(13, 13, 64), (1, 17, 32), (5, 9, 128)])
def test_attention_equals_jax_numpy(gptcore_jax, causal, t_q, t_k, d):
    kq, kk, kv = jax.random.split(jax.random.key(2), 3)
    q = jax.random.normal(kq, (2, 3, t_q, d))
    k, v = jax.random.normal(kk, (2, 3, t_k, d)), jax.random.normal(kv, (2, 3, t_k, d))
    got = gptcore_jax.gptcore_attention(q, k, v, causal=causal)
    want = gptcore_jax.reference_attention(q, k, v, causal=causal)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_inside_a_larger_jitted_function(gptcore_jax):
    @jax.jit
    def block(x, w, b):
        h = gptcore_jax.gptcore_layer_norm(x, w, b)
        return x + jnp.tanh(gptcore_jax.gptcore_attention(h, 2 * h, h))

    x = jax.random.normal(jax.random.key(3), (1, 2, 7, 32))
    w, b = jnp.full(32, 0.5), jnp.zeros(32)
    h = gptcore_jax.reference_layer_norm(x, w, b)
    want = x + jnp.tanh(gptcore_jax.reference_attention(h, 2 * h, h))
    np.testing.assert_allclose(block(x, w, b), want, rtol=1e-5, atol=1e-5)


def test_a_bad_call_raises_the_library_message(gptcore_jax):
    q = jnp.zeros((1, 1, 4, 20))  # head dim 20: not a size the kernels take
    with pytest.raises(Exception, match="gc_attention_fwd"):
        gptcore_jax.gptcore_attention(q, q, q).block_until_ready()


def test_script_checks_both_ops(handler_library):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(handler_library)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("max relative error") == 3
