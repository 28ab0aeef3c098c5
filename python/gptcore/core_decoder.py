"""Generation in gptcore's core on the CPU: each prefill or decode step is one call into the C++
core (gc_gpt_decode) that runs the whole forward, instead of about 90 framework ops a token, with
the KV cache in the core's layout and the weights in float32 (the model's own memory), bfloat16 or
int8 (one scale per output row), converted to float32 on the fly by the matrix-vector kernels;
bfloat16 and int8 matrices are stored packed (gc_dense_pack: four rows' 32-value chunks side by
side), which the kernels stream ~20% faster than rows.
Everything a step streams (the matrices, scales, biases and layer norms) and the KV cache live in
memory asked of the OS in 2 MiB pages (huge_page_buffer); the model's own float32 parameters are
moved there (same values), so fp32 takes no second copy.

    decoder = CoreDecoder(model, slots=16, max_len=1024, weights="int8")
    logits = decoder.forward(tokens, slots=[0, 3], starts=[0, 17], lens=[5, 1])

A bfloat16 weight is the float32 one rounded to nearest-even; an int8 row is round(w / s) with
s = max|w| / 127. Activations, sums, layer norms, attention and the cache stay float32, except
that the int8 products take x rounded to int16 per block of 1024 values (an error of at most 2^-16
of the block's largest |x|, ~1/256 of the weights' own rounding; gptcore/decode.h). The
`Engine` (gptcore.generate) decodes through this on the CPU; `--weights` picks the format.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from gptcore import _C
from gptcore.model import GPT, Linear
from gptcore.ops._views import view

WEIGHT_FORMATS = ("fp32", "bf16", "int8")
_HUGE_PAGE = 2 << 20
_ALIGN = 64  # each tensor's first byte in the block: a cache line


def huge_page_buffer(nbytes: int) -> torch.Tensor:
    """nbytes of zeroed memory (uint8) from a 2 MiB boundary, asked of the OS in transparent huge
    pages where it has them (Linux: madvise MADV_HUGEPAGE before the first touch; elsewhere, or
    with GPTCORE_HUGE_PAGES=0, plain memory). A decode step streams every weight once and the
    hardware prefetchers stop at each page boundary (bench_generate.py --small-pages compares)."""
    if not hasattr(mmap, "MADV_HUGEPAGE") or nbytes == 0 or os.environ.get("GPTCORE_HUGE_PAGES") == "0":
        return torch.zeros(nbytes, dtype=torch.uint8)
    memory = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    block = torch.frombuffer(memory, dtype=torch.uint8)  # keeps `memory` alive
    skip = -block.data_ptr() % _HUGE_PAGE  # a multiple of the 4 KiB page: mmap returns pages
    memory.madvise(mmap.MADV_HUGEPAGE, skip, -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE)
    return block[skip : skip + nbytes]


def in_one_block(tensors: Iterable[torch.Tensor]) -> dict[int, torch.Tensor]:
    """The tensors copied into one huge_page_buffer, by id: each storage's span that they use is
    copied once, so tensors sharing memory (the tied head is the first rows of wte) share it there."""
    tensors = list(tensors)
    spans: dict[int, list[int]] = {}  # storage address -> [first byte used, end]
    for t in tensors:
        at = t.untyped_storage().data_ptr()
        first = t.storage_offset() * t.element_size()
        end = first + (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))) * t.element_size()
        span = spans.setdefault(at, [first, end])
        span[0], span[1] = min(span[0], first), max(span[1], end)
    starts, total = {}, 0  # storage address -> where its span starts in the block
    for at, (first, end) in spans.items():
        starts[at] = total
        total += -(-(end - first) // _ALIGN) * _ALIGN
    block = huge_page_buffer(total)
    placed, copied = {}, set()
    for t in tensors:
        at = t.untyped_storage().data_ptr()
        first, end = spans[at]
        if at not in copied:
            raw = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())
            block[starts[at] : starts[at] + end - first].copy_(raw[first:end])
            copied.add(at)
        typed, size = block.view(t.dtype), t.element_size()
        offset = typed.storage_offset() + (starts[at] + t.storage_offset() * size - first) // size
        placed[id(t)] = typed.as_strided(t.shape, t.stride(), offset)
    return placed


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


def pack(stored: torch.Tensor) -> torch.Tensor:
    """A bfloat16 or int8 weight [N, K] in the core's packed order (1-D; gptcore/decode.h)."""
    packed = torch.empty(_C.dense_packed_numel(*stored.shape), dtype=stored.dtype)
    _C.dense_pack(view(stored, "weight"), view(packed, "packed"))
    return packed


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
    positions, in the core's memory layout [n_layer, slots, n_head, max_len, head_dim].
    packed=False keeps bfloat16 and int8 matrices in rows (F.linear's layout), to compare."""

    def __init__(self, model: GPT, slots: int, max_len: int, weights: str = "fp32", *, packed: bool = True):
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
        why = unsupported(model)
        if why is not None:
            raise ValueError(f"generation in the core needs gptcore's GPT in float32 on the CPU: {why}")
        c = model.config
        self.config, self.weights = c, weights
        shape = (c.n_layer, slots, c.n_head, max_len, c.head_dim)
        numel = c.n_layer * slots * c.n_head * max_len * c.head_dim
        self.k_cache, self.v_cache = (huge_page_buffer(4 * numel).view(torch.float32).view(shape) for _ in range(2))
        self._k_view, self._v_view = view(self.k_cache, "k_cache"), view(self.v_cache, "v_cache")
        t = model.transformer
        packed_shapes: dict[int, tuple[int, int]] = {}  # id of a packed weight -> its [N, K]

        # Everything a step streams, in the order it reads it: per layer LN1, QKV, projection, LN2, MLP
        # (each matrix as (stored weight, scale, bias)), then the final LN and the tied head.
        def dense(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
            stored, scale = quantize(weight, weights)
            if packed and weights != "fp32":
                stored = pack(stored)
                packed_shapes[id(stored)] = tuple(weight.shape)
            return stored, scale, None if bias is None else bias.detach()

        def norm(ln: nn.LayerNorm) -> tuple:
            return ln.weight.detach(), None if ln.bias is None else ln.bias.detach()

        layer_parts = [
            (
                norm(b.ln_1),
                dense(b.attn.c_attn.weight, b.attn.c_attn.bias),
                dense(b.attn.c_proj.weight, b.attn.c_proj.bias),
                norm(b.ln_2),
                dense(b.mlp.c_fc.weight, b.mlp.c_fc.bias),
                dense(b.mlp.c_proj.weight, b.mlp.c_proj.bias),
            )
            for b in t.h.values()
        ]
        final_parts = (norm(t.ln_f), dense(t.wte.weight[: c.vocab_size], None))
        streamed = [x for group in (*layer_parts, final_parts) for part in group for x in part if x is not None]
        self.read_bytes = sum(x.numel() * x.element_size() for x in streamed)  # once a step
        # ... in one block of huge pages, with every parameter of the model that shares memory with
        # them (fp32's matrices, the biases and norms; all of wte when it is fp32's head): each
        # parameter then points into the block (the same values), so nothing is held twice.
        used = {x.untyped_storage().data_ptr() for x in streamed}
        moved = [p for p in model.parameters() if p.untyped_storage().data_ptr() in used]
        moved_data = [p.detach() for p in moved]
        placed = in_one_block(streamed + moved_data)
        for p, data in zip(moved, moved_data):
            p.data = placed[id(data)]
        wte, wpe = t.wte.weight.detach(), t.wpe.weight.detach()  # the embedding: a row a token
        self._tensors = [*placed.values(), wte, wpe]  # what the core's views point into, kept alive here

        def at(*part: torch.Tensor | None) -> list[_C.Tensor | None]:
            return [None if x is None else view(placed[id(x)], "weight") for x in part]

        def dense_at(part: tuple) -> _C.Dense:
            return _C.Dense(*at(*part), packed_shape=packed_shapes.get(id(part[0])))

        layers = [
            _C.GptLayer(*at(*ln_1), dense_at(qkv), dense_at(proj), *at(*ln_2), dense_at(fc), dense_at(fc_proj))
            for ln_1, qkv, proj, ln_2, fc, fc_proj in layer_parts
        ]
        ln_f, head = final_parts
        embedding, eps = (view(wte, "wte"), view(wpe, "wpe")), c.layer_norm_eps
        self.model = _C.GptModel(c.n_head, c.vocab_size, eps, *embedding, layers, *at(*ln_f), dense_at(head))

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
        logits = torch.empty(len(tokens) if every_position else len(slots), self.config.vocab_size)
        _C.gpt_decode(
            self.model,
            self._k_view,
            self._v_view,
            list(tokens),
            list(slots),
            list(starts),
            list(lens),
            view(logits, "logits"),
            every_position,
        )
        return logits
