"""gptcore: GPT-2 / GPT-3 style training on a fused, torch-free C++/CUDA core.

`import gptcore` loads neither torch nor the core, so an embedder can ask where the C API is
(`get_include()`, `get_library()`, `get_cmake_dir()`) from a process that never runs PyTorch. The
rest loads on first use: `gptcore.ops` (importing it registers the torch custom ops), `gptcore.optim`,
and `gptcore.Error` and `__version__` from the core."""

from importlib import import_module

from gptcore.native import get_cmake_dir, get_include, get_library

_SUBMODULES = ("ops", "optim")
_FROM_C = {"Error": "Error", "_build_info": "build_info"}  # gptcore's name -> _C's

__all__ = ["Error", "ops", "optim", "__version__", "get_include", "get_library", "get_cmake_dir"]


def __getattr__(name: str):
    """The lazily loaded attributes (PEP 562); a submodule imported once is then a plain attribute."""
    if name in _SUBMODULES:
        return import_module(f"gptcore.{name}")
    if name in _FROM_C:
        return getattr(import_module("gptcore._C"), _FROM_C[name])
    if name == "__version__":
        return import_module("gptcore._C").build_info()["version"]
    raise AttributeError(f"module 'gptcore' has no attribute {name!r}")
