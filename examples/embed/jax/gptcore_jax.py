"""gptcore's kernels as JAX functions through XLA's FFI (CPU custom calls): `gptcore_layer_norm(x, w, b)`
and `gptcore_attention(q, k, v)`, jit-compiled, float32. The handlers (gptcore_jax.cpp, built with
CMakeLists.txt beside this file) call gptcore's C API in libgptcore.so.

Run as a script, it checks both against jax.numpy and exits 1 on a mismatch:
    python examples/embed/jax/gptcore_jax.py build/embed-jax/libgptcore_jax.so
"""

from __future__ import annotations

import ctypes
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def register(handler_library: str) -> None:
    """Register the handlers of a built libgptcore_jax.so as the CPU FFI targets the functions call."""
    handlers = ctypes.cdll.LoadLibrary(handler_library)
    for target, symbol in (("gptcore_layer_norm", "GptcoreLayerNorm"), ("gptcore_attention", "GptcoreAttention")):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handlers, symbol)), platform="cpu")


@partial(jax.jit, static_argnames=("eps",))
def gptcore_layer_norm(x: jax.Array, weight: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last dimension of a float32 x."""
    rows = jax.ShapeDtypeStruct((x.size // x.shape[-1],), jnp.float32)  # the kernel's per-row mean and rstd
    y, _, _ = jax.ffi.ffi_call("gptcore_layer_norm", (jax.ShapeDtypeStruct(x.shape, jnp.float32), rows, rows))(
        x, weight, bias, eps=np.float32(eps)
    )
    return y


@partial(jax.jit, static_argnames=("causal",))
def gptcore_attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool = True) -> jax.Array:
    """Scaled dot-product attention over float32 [B, H, T, D] (D a multiple of 8 in 32..128)."""
    out_types = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct(q.shape[:-1], jnp.float32))
    out, _ = jax.ffi.ffi_call("gptcore_attention", out_types)(
        q, k, v, scale=np.float32(q.shape[-1] ** -0.5), causal=np.int32(causal)
    )
    return out


def reference_layer_norm(x, weight, bias, eps=1e-5):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * weight + bias


def reference_attention(q, k, v, causal=True):
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if causal:
        t_q, t_k = scores.shape[-2:]
        scores = jnp.where(jnp.tri(t_q, t_k, t_k - t_q, dtype=bool), scores, -jnp.inf)
    return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(scores, axis=-1), v)


def main(handler_library: str) -> int:
    register(handler_library)
    keys = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(keys[0], (4, 9, 96))
    w, b = jax.random.normal(keys[1], (96,)), jax.random.normal(keys[2], (96,))
    q, k, v = (jax.random.normal(key, (2, 3, 13, 64)) for key in keys[3:])
    checks = [
        ("layer norm", gptcore_layer_norm(x, w, b), reference_layer_norm(x, w, b)),
        ("attention", gptcore_attention(q, k, v), reference_attention(q, k, v)),
        ("attention", gptcore_attention(q, k, v, causal=False), reference_attention(q, k, v, causal=False)),
    ]
    failed = 0
    for name, got, want in checks:
        error = float(jnp.max(jnp.abs(got - want) / (1 + jnp.abs(want))))
        print(f"{name:11s} max relative error {error:.2e}")
        failed += not error < 1e-5
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
