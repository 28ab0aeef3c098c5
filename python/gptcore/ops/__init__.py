"""gptcore's fused ops as torch custom ops (eager, torch.compile, CUDA graphs).

`gptcore.ops.reference` holds a pure-PyTorch twin of each op for tests and fallback.
"""

from gptcore.ops import reference
from gptcore.ops.attention import attention, attention_decode, takes_head_dim
from gptcore.ops.cross_entropy import cross_entropy
from gptcore.ops.layer_norm import fused_add_layer_norm, layer_norm
from gptcore.ops.linear import linear

__all__ = [
    "attention",
    "attention_decode",
    "cross_entropy",
    "fused_add_layer_norm",
    "layer_norm",
    "linear",
    "reference",
    "takes_head_dim",
]
