"""Generation in gptcore's core on the CPU: each prefill or decode step is one call into the C++
core (gc_gpt_decode) that runs the whole forward, instead of about 90 framework ops a token, with
the KV cache in the core's layout and the weights in float32 (the model's own memory), bfloat16 or
int8 (one scale per output row), converted to float32 on the fly by the matrix-vector kernels.

    decoder = CoreDecoder(model, slots=16, max_len=1024, weights="int8")
    logits = decoder.forward(tokens, slots=[0, 3], starts=[0, 17], lens=[5, 1])

A bfloat16 weight is the float32 one rounded to nearest-even; an int8 row is round(w / s) with
s = max|w| / 127. Activations, sums, layer norms, attention and the cache stay float32. The
`Engine` (gptcore.generate) decodes through this on the CPU; `--weights` picks the format.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from gptcore import _C
from gptcore.model import GPT, Linear
from gptcore.ops._views import view

WEIGHT_FORMATS = ("fp32", "bf16", "int8")


def quantize(weight: torch.Tensor, weights: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(stored weight, int8 row scales or None) of a float32 weight [N, K] in the format `weights`."""
    weight = weight.detach()
    if weights == "fp32":
        return weight.contiguous(), None
    if weights == "bf16":
        return weight.to(torch.bfloat16).contiguous(), None
    amax = weight.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).float()
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize(stored: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The float64 weight that quantize's (stored, scale) stands for: what the kernels multiply by."""
    w = stored.double()
    return w if scale is None else w * scale.double()[:, None]


def unsupported(model: GPT) -> str | None:
    """Why the core cannot run this model (None when it can): it runs gptcore's own GPT, whole
    (not a tensor-parallel shard, no LoRA adapters left unmerged), in float32 on the CPU."""
    if not isinstance(model, GPT):
        return f"{type(model).__name__} is not gptcore's GPT"
    c = model.config
    params = list(model.parameters())
    if any(p.device.type != "cpu" for p in params):
        return "the model is not on the CPU"
    if any(p.dtype != torch.float32 for p in params):
        return "the model is not float32 (load it with --dtype fp32)"
    if not 32 <= c.head_dim <= 128 or c.head_dim % 8:
        return f"head dim {c.head_dim} is outside 32..128 in steps of 8"
    for block in model.transformer.h.values():
        if block.attn.n_head != c.n_head:
            return "the model is a tensor-parallel shard"
        linears = (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
        if any(type(m) is not Linear for m in linears) or any(
            type(n) is not nn.LayerNorm for n in (block.ln_1, block.ln_2)
        ):
            return "the model has layers that are not gptcore's own (merge LoRA adapters first)"
    return None


class CoreDecoder:
    """The model's weights in `weights` format and a KV cache of `slots` sequences of max_len
    positions, in the core's memory layout [n_layer, slots, n_head, max_len, head_dim]."""

    def __init__(self, model: GPT, slots: int, max_len: int, weights: str = "fp32"):
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
        why = unsupported(model)
        if why is not None:
            raise ValueError(f"generation in the core needs gptcore's GPT in float32 on the CPU: {why}")
        c = model.config
        self.config, self.weights = c, weights
        shape = (c.n_layer, slots, c.n_head, max_len, c.head_dim)
        self.k_cache, self.v_cache = torch.zeros(shape), torch.zeros(shape)
        self._tensors: list[torch.Tensor] = []  # everything the core's views point into, kept alive here
        self.read_bytes = 0  # the weights a decode step reads once: every matrix, scale and bias
        t = model.transformer
        layers = [
            _C.GptLayer(
                self._view(b.ln_1.weight),
                self._view(b.ln_1.bias),
                self._dense(b.attn.c_attn),
                self._dense(b.attn.c_proj),
                self._view(b.ln_2.weight),
                self._view(b.ln_2.bias),
                self._dense(b.mlp.c_fc),
                self._dense(b.mlp.c_proj),
            )
            for b in t.h.values()
        ]
        self.model = _C.GptModel(
            c.n_head,
            c.vocab_size,
            c.layer_norm_eps,
            self._view(t.wte.weight),
            self._view(t.wpe.weight),
            layers,
            self._view(t.ln_f.weight),
            self._view(t.ln_f.bias),
            self._dense_of(t.wte.weight[: c.vocab_size], None),  # the tied head; fp32: wte's own rows
        )

    def _view(self, t: torch.Tensor | None) -> _C.Tensor | None:
        if t is None:
            return None
        t = t.detach().contiguous()
        self._tensors.append(t)
        return view(t, "weight")

    def _dense_of(self, weight: torch.Tensor, bias: torch.Tensor | None) -> _C.Dense:
        stored, scale = quantize(weight, self.weights)
        self.read_bytes += sum(t.numel() * t.element_size() for t in (stored, scale, bias) if t is not None)
        return _C.Dense(self._view(stored), self._view(scale), self._view(bias))

    def _dense(self, linear: Linear) -> _C.Dense:
        return self._dense_of(linear.weight, linear.bias)

    @torch.no_grad()
    def forward(
        self,
        tokens: Sequence[int],
        slots: Sequence[int],
        starts: Sequence[int],
        lens: Sequence[int],
        every_position: bool = False,
    ) -> torch.Tensor:
        """Sequence i brings lens[i] new tokens (taken in order from `tokens`) at positions
        starts[i].. of cache slot slots[i]; logits [S, vocab_size] of each one's last new token, or
        [len(tokens), vocab_size] of every new token with every_position."""
        ids = torch.tensor(tokens, dtype=torch.int32)
        seq = [torch.tensor(v, dtype=torch.int32) for v in (slots, starts, lens)]
        logits = torch.empty(len(tokens) if every_position else len(slots), self.config.vocab_size)
        _C.gpt_decode(
            self.model,
            view(self.k_cache, "k_cache"),
            view(self.v_cache, "v_cache"),
            view(ids, "tokens"),
            *(view(v, name) for v, name in zip(seq, ("seq_slot", "seq_start", "seq_len"))),
            view(logits, "logits"),
            every_position,
        )
        return logits
