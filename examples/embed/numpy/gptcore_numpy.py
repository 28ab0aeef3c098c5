"""gptcore's kernels on NumPy arrays through ctypes, without torch: layer norm, cross-entropy and
attention forward on libgptcore.so's C API, found by `gptcore.get_library()`.

Run as a script, it checks each op against a NumPy reference and exits 1 on a mismatch:
    python examples/embed/numpy/gptcore_numpy.py
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

import gptcore

GC_FLOAT32, GC_INT64, GC_CPU, GC_MAX_DIMS = 0, 5, 0, 8  # gptcore/tensor.h


class Tensor(ctypes.Structure):
    """gc_tensor: a non-owning view (gptcore/tensor.h)."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("device_type", ctypes.c_int32),
        ("device_index", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * GC_MAX_DIMS),
        ("strides", ctypes.c_int64 * GC_MAX_DIMS),
    ]


class LayerNormFwdParams(ctypes.Structure):
    """gc_layer_norm_fwd_params (gptcore/layer_norm.h)."""

    _fields_ = [(name, Tensor) for name in ("x", "residual", "weight", "bias", "y", "sum", "mean", "rstd")]
    _fields_ += [("eps", ctypes.c_float)]


class CrossEntropyFwdParams(ctypes.Structure):
    """gc_cross_entropy_fwd_params (gptcore/cross_entropy.h)."""

    _fields_ = [(name, Tensor) for name in ("logits", "target", "lse", "loss", "target_logit")]
    _fields_ += [(name, ctypes.c_int64) for name in ("vocab_start", "vocab_total", "ignore_index")]


class AttentionFwdParams(ctypes.Structure):
    """gc_attention_fwd_params (gptcore/attention.h)."""

    _fields_ = [(name, Tensor) for name in ("q", "k", "v", "out", "lse")]
    _fields_ += [
        ("scale", ctypes.c_float),
        ("causal", ctypes.c_int32),
        ("dropout_p", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
        ("cu_seqlens", Tensor),
    ]


lib = ctypes.CDLL(gptcore.get_library())
lib.gc_last_error.restype = ctypes.c_char_p
lib.gc_version.restype = ctypes.c_char_p
for _name, _params in (
    ("gc_layer_norm_fwd", LayerNormFwdParams),
    ("gc_cross_entropy_fwd", CrossEntropyFwdParams),
    ("gc_attention_fwd", AttentionFwdParams),
):
    getattr(lib, _name).argtypes = [ctypes.POINTER(_params), ctypes.c_void_p]
    getattr(lib, _name).restype = ctypes.c_int


def _view(array: np.ndarray) -> Tensor:
    """A gc_tensor over a C-contiguous float32 or int64 array (gptcore's CPU kernels take these)."""
    codes = {np.dtype(np.float32): GC_FLOAT32, np.dtype(np.int64): GC_INT64}
    if array.dtype not in codes or not array.flags.c_contiguous:
        raise TypeError(f"gptcore takes C-contiguous float32 or int64 arrays, not {array.dtype} {array.strides}")
    t = Tensor(data=array.ctypes.data, dtype=codes[array.dtype], device_type=GC_CPU, ndim=array.ndim)
    t.shape[: array.ndim] = array.shape
    t.strides[: array.ndim] = [s // array.itemsize for s in array.strides]
    return t


def _call(function, params) -> None:
    """Run one C API call; a failed status raises with the library's message."""
    if function(ctypes.byref(params), None) != 0:
        raise RuntimeError(lib.gc_last_error().decode())


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last dimension, like torch.nn.functional.layer_norm."""
    x, weight, bias = (np.ascontiguousarray(a, np.float32) for a in (x, weight, bias))
    y = np.empty_like(x)
    mean, rstd = (np.empty(x.size // x.shape[-1], np.float32) for _ in range(2))  # per row, rows flattened
    params = LayerNormFwdParams(
        x=_view(x), weight=_view(weight), bias=_view(bias), y=_view(y), mean=_view(mean), rstd=_view(rstd), eps=eps
    )
    _call(lib.gc_layer_norm_fwd, params)
    return y


def cross_entropy(logits: np.ndarray, target: np.ndarray, ignore_index: int = -100) -> np.ndarray:
    """Each row's softmax cross-entropy loss over logits [N, V] (0 where target == ignore_index)."""
    logits = np.ascontiguousarray(logits, np.float32)
    target = np.ascontiguousarray(target, np.int64)
    lse, loss = (np.empty(logits.shape[0], np.float32) for _ in range(2))
    params = CrossEntropyFwdParams(
        logits=_view(logits),
        target=_view(target),
        lse=_view(lse),
        loss=_view(loss),
        vocab_start=0,
        vocab_total=logits.shape[1],
        ignore_index=ignore_index,
    )
    _call(lib.gc_cross_entropy_fwd, params)
    return loss


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = True) -> np.ndarray:
    """Scaled dot-product attention over [B, H, T, D] arrays, like F.scaled_dot_product_attention."""
    q, k, v = (np.ascontiguousarray(a, np.float32) for a in (q, k, v))
    out = np.empty_like(q)
    lse = np.empty(q.shape[:-1], np.float32)
    params = AttentionFwdParams(
        q=_view(q), k=_view(k), v=_view(v), out=_view(out), lse=_view(lse), scale=q.shape[-1] ** -0.5, causal=causal
    )
    _call(lib.gc_attention_fwd, params)
    return out


def _reference_attention(q, k, v, causal):
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        t_q, t_k = scores.shape[-2:]
        scores = np.where(np.tri(t_q, t_k, t_k - t_q, dtype=bool), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def main() -> int:
    rng = np.random.default_rng(0)
    print(f"gptcore {lib.gc_version().decode()} via ctypes, numpy {np.__version__}")
    x, w, b = rng.standard_normal((3, 5, 97)), rng.standard_normal(97), rng.standard_normal(97)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    checks = [("layer norm", layer_norm(x, w, b), (x - mu) / np.sqrt(var + 1e-5) * w + b)]

    logits, target = 3 * rng.standard_normal((7, 211)), rng.integers(0, 211, 7)
    target[2] = -100
    m = logits.max(-1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(-1))
    want = np.where(target == -100, 0.0, lse - logits[np.arange(7), np.maximum(target, 0)])
    checks.append(("cross-entropy", cross_entropy(logits, target), want))

    q, k, v = (rng.standard_normal((2, 3, 11, 64)) for _ in range(3))
    checks.append(("attention", attention(q, k, v), _reference_attention(q, k, v, causal=True)))

    failed = 0
    for name, got, want in checks:
        error = float(np.max(np.abs(got - want) / (1 + np.abs(want))))
        print(f"{name:14s} max relative error {error:.2e}")
        failed += not error < 1e-5
    assert "torch" not in sys.modules, "the NumPy embedding imported torch"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
