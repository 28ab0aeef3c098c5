"""torch.Tensor -> gptcore._C.Tensor views, and the stream an op runs on."""

from __future__ import annotations

import torch

from gptcore import _C

_DTYPE_CODES = {
    torch.float32: _C.dtype.float32,
    torch.float16: _C.dtype.float16,
    torch.bfloat16: _C.dtype.bfloat16,
    torch.float64: _C.dtype.float64,
    torch.int32: _C.dtype.int32,
    torch.int64: _C.dtype.int64,
    torch.uint16: _C.dtype.uint16,
    torch.uint8: _C.dtype.uint8,
    torch.int8: _C.dtype.int8,
}


def view(t: torch.Tensor | None, name: str) -> _C.Tensor | None:
    """A non-owning view of `t` (None stays None). The caller keeps `t` alive."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor, got {type(t).__name__}")
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"'{name}' has dtype {t.dtype}, which gptcore does not handle")
    if t.device.type == "cuda":
        device = _C.CUDA
    elif t.device.type == "cpu":
        device = _C.CPU
    else:
        raise ValueError(f"'{name}' is on device '{t.device}'; gptcore runs on cpu and cuda tensors")
    return _C.Tensor(t.data_ptr(), code, device, t.device.index or 0, list(t.shape), list(t.stride()))


def stream(t: torch.Tensor) -> int:
    """The raw cudaStream_t of the current stream on t's device (0 on CPU)."""
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def rows(x: torch.Tensor) -> int:
    """Rows of x viewed as [N, C] (C = the last dimension)."""
    return x.numel() // x.shape[-1] if x.dim() > 0 and x.shape[-1] > 0 else 0
