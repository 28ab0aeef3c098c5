"""gptcore: GPT-2 / GPT-3 style training on a fused, torch-free C++/CUDA core."""

from gptcore._C import Error
from gptcore._C import build_info as _build_info

__version__ = _build_info()["version"]

from gptcore import ops, optim  # noqa: E402  (ops register torch custom ops on import)

__all__ = ["Error", "ops", "optim", "__version__"]
