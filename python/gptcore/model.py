"""One readable GPT: learned positions, pre-LN, fused QKV, tanh GELU, tied embeddings.

The same module runs on gptcore's fused ops or on plain PyTorch ops (`use_gptcore_ops=False`),
picked once when the model is built. Parameter names follow Hugging Face's GPT2LMHeadModel
(`transformer.h.0.attn.c_attn.weight`, ...) with linear weights in F.linear's [out, in] layout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gptcore import ops as gptcore_ops
from gptcore.ops import reference

# name: (n_layer, n_head, n_embd); GPT-2 sizes have 1024 positions, GPT-3 sizes 2048.
_GPT2_SIZES = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}
_GPT3_SIZES = {
    "gpt3-base": (12, 12, 768),
    "gpt3-large": (24, 16, 1024),
    "gpt3-1.3b": (24, 32, 2048),
    "gpt3-2.7b": (32, 32, 2560),
    "gpt3-13b": (40, 40, 5120),
    "gpt3-30b": (48, 56, 7168),
    "gpt3-175b": (96, 96, 12288),
}
# Small models that train on a CPU in seconds (tests, examples).
_TINY = {
    "tiny": dict(vocab_size=512, n_positions=128, n_layer=2, n_head=2, n_embd=64),
    "mini": dict(vocab_size=8192, n_positions=256, n_layer=4, n_head=4, n_embd=256),
}


def _presets() -> dict[str, dict]:
    presets = {
        name: dict(vocab_size=50257, n_positions=1024, n_layer=L, n_head=H, n_embd=C)
        for name, (L, H, C) in _GPT2_SIZES.items()
    }
    presets |= {
        name: dict(vocab_size=50257, n_positions=2048, n_layer=L, n_head=H, n_embd=C)
        for name, (L, H, C) in _GPT3_SIZES.items()
    }
    return presets | _TINY


PRESETS = _presets()

# Precision names (configs, --dtype) -> parameter dtypes.
IGNORE_INDEX = -100  # targets the loss skips

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024  # block size: the longest sequence the model sees
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # hidden: embeddings, attention output, MLP output
    attn_dropout: float = 0.0  # attention probabilities
    bias: bool = True  # biases in linear layers and layer norms
    layer_norm_eps: float = 1e-5
    pad_vocab_multiple: int = 128  # embedding rows padded so the vocab GEMM has friendly shapes
    use_gptcore_ops: bool = True  # False: plain PyTorch ops (tests, comparison)

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd", "pad_vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"GPTConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"GPTConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """A named size ("gpt2", "gpt2-medium", ..., "gpt3-175b", "tiny", "mini") with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(**(PRESETS[name] | overrides))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    @property
    def num_parameters(self) -> int:
        """Parameter count from the shapes alone (no allocation); equals GPT(config).num_parameters()."""
        C, b = self.n_embd, int(self.bias)
        layer_norm = C + b * C
        per_layer = 2 * layer_norm + (3 * C * C + b * 3 * C) + (C * C + b * C) + (4 * C * C + b * 4 * C)
        per_layer += 4 * C * C + b * C
        return self.padded_vocab_size * C + self.n_positions * C + self.n_layer * per_layer + layer_norm

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _reference_attention(q, k, v, causal=True, dropout_p=0.0, scale=None, cu_seqlens=None):
    """gptcore.ops.attention on PyTorch's SDPA; with cu_seqlens [B, S + 1] (packed documents, see
    reference.check_cu_seqlens) each query sees only the earlier keys of its own document."""
    if cu_seqlens is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout_p, scale=scale)
    mask = reference.document_mask(cu_seqlens, q.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


REFERENCE_OPS = types.SimpleNamespace(
    layer_norm=reference.layer_norm,
    fused_add_layer_norm=reference.fused_add_layer_norm,
    linear=reference.linear,
    attention=_reference_attention,
    attention_decode=reference.attention_decode,
    cross_entropy=reference.cross_entropy,
)


# gptcore's ops with the reference attention: for heads gptcore's attention kernels do not take.
REFERENCE_ATTENTION_OPS = types.SimpleNamespace(
    layer_norm=gptcore_ops.layer_norm,
    fused_add_layer_norm=gptcore_ops.fused_add_layer_norm,
    linear=gptcore_ops.linear,
    attention=_reference_attention,
    attention_decode=reference.attention_decode,
    cross_entropy=gptcore_ops.cross_entropy,
)


def op_set(use_gptcore_ops: bool, head_dim: int | None = None):
    """gptcore.ops, or their plain PyTorch twins; given a head dim gptcore's attention kernels do not
    take (gptcore.ops.takes_head_dim), gptcore's ops with the reference attention."""
    if not use_gptcore_ops:
        return REFERENCE_OPS
    return gptcore_ops if head_dim is None or gptcore_ops.takes_head_dim(head_dim) else REFERENCE_ATTENTION_OPS


def tied_logits(ops, x: torch.Tensor, embedding: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The tied LM head over every (padded) embedding row: x [..., C] -> logits [..., padded rows].
    The padding columns get -inf through the bias, so they take no probability and pass no gradient,
    and the loss equals one over the real columns alone; the product stays a multiple of
    pad_vocab_multiple columns wide. With an odd vocabulary (GPT-2's 50257) each row of the logits
    and of their gradient would start 2-byte aligned, and cuBLAS then runs its align1 kernels: 30 of
    an 83 ms GPT-2 step on an H200. Callers slice [..., :vocab_size] for the real logits."""
    if embedding.shape[0] == vocab_size:
        return ops.linear(x, embedding)
    mask = torch.zeros(embedding.shape[0], dtype=x.dtype, device=x.device)
    mask[vocab_size:] = float("-inf")
    return ops.linear(x, embedding, mask)


class Linear(nn.Linear):
    """nn.Linear (weight [out, in]) on ops.linear, with an activation and a residual fused into the
    GEMM's epilogue: forward(x, activation, residual) = activation(x W^T + b) + residual. The
    blocks call every linear this way, so a module with the same call (gptcore.parallel's
    column/row-parallel linears, gptcore.finetune.lora.LoRALinear) can take its place."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, use_gptcore_ops: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.use_gptcore_ops = use_gptcore_ops

    @property
    def ops(self):  # looked up, not stored: a Python module attribute would break deepcopy and pickling
        return op_set(self.use_gptcore_ops)

    def forward(self, x: torch.Tensor, activation: str | None = None, residual: torch.Tensor | None = None):
        return self.project(x, self.weight, self.bias, activation, residual)

    def project(self, x, weight, bias, activation=None, residual=None) -> torch.Tensor:
        """forward with the given weight and bias (a wrapper that holds them: LoRALinear)."""
        return self.ops.linear(x, weight, bias, activation=activation, residual=residual)


class CausalAttention(nn.Module):
    """Causal softmax attention of q, k, v [B, H, T, D]; in training, dropout p on its weights
    (inside the fused kernel, or PyTorch's SDPA for heads the kernels do not take). With cu_seqlens
    int32 [B, S + 1] (the document boundaries of packed rows: reference.check_cu_seqlens) a token
    attends only within its own document."""

    def __init__(self, p: float, use_gptcore_ops: bool = True, head_dim: int | None = None):
        super().__init__()
        self.p, self.use_gptcore_ops, self.head_dim = p, use_gptcore_ops, head_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens=None) -> torch.Tensor:
        ops = op_set(self.use_gptcore_ops, self.head_dim)
        return ops.attention(q, k, v, causal=True, dropout_p=self.p if self.training else 0.0, cu_seqlens=cu_seqlens)


class SelfAttention(nn.Module):
    """c_attn (fused q, k, v projection), the attention over the heads it yields, c_proj."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        C, ops = config.n_embd, config.use_gptcore_ops
        self.head_dim = config.head_dim
        self.c_attn = Linear(C, 3 * C, config.bias, ops)
        self.c_proj = Linear(C, C, config.bias, ops)
        self.core = CausalAttention(config.attn_dropout, ops, config.head_dim)

    @property
    def n_head(self) -> int:
        """The heads computed here, from c_attn's rows: all of them, or a tensor-parallel rank's share."""
        return self.c_attn.weight.shape[0] // (3 * self.head_dim)

    def heads(self, h: torch.Tensor, attend=None, cu_seqlens=None) -> torch.Tensor:
        """h [B, T, C] -> attention over the heads, merged [B, T, n_head * head_dim] (before c_proj).
        attend(q, k, v) -> y replaces causal self-attention when given (generation: it writes k, v
        into a KV cache and attends over the cache); cu_seqlens: see CausalAttention."""
        qkv = self.c_attn(h)
        B, T, D = qkv.shape[0], qkv.shape[1], self.head_dim
        q, k, v = (t.view(B, T, -1, D).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        y = self.core(q, k, v, cu_seqlens) if attend is None else attend(q, k, v)
        return y.transpose(1, 2).contiguous().view(B, T, -1)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        C, ops = config.n_embd, config.use_gptcore_ops
        self.c_fc = Linear(C, 4 * C, config.bias, ops)
        self.c_proj = Linear(4 * C, C, config.bias, ops)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        C, bias = config.n_embd, config.bias
        self.config = config
        self.ln_1 = nn.LayerNorm(C, eps=config.layer_norm_eps, bias=bias)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(C, eps=config.layer_norm_eps, bias=bias)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)  # on each sublayer's output, before the residual add

    @property
    def ops(self):  # looked up, not stored: a Python module attribute would break deepcopy and pickling
        return op_set(self.config.use_gptcore_ops)

    def _project_add(self, x: torch.Tensor, proj: nn.Module, residual: torch.Tensor) -> torch.Tensor:
        """residual + dropout(proj(x)); without active dropout the add is fused into the GEMM."""
        if self.training and self.config.dropout > 0:
            return residual + self.dropout(proj(x))
        return proj(x, residual=residual)

    def attention_sublayer(self, x: torch.Tensor, attend=None, cu_seqlens=None) -> torch.Tensor:
        """The attention of ln_1(x), heads merged (before c_proj): the part `recompute="selective"`
        recomputes in the backward. attend, cu_seqlens: see SelfAttention.heads."""
        h = self.ops.layer_norm(x, self.ln_1.weight, self.ln_1.bias, self.config.layer_norm_eps)
        return self.attn.heads(h, attend, cu_seqlens)

    def forward(self, x: torch.Tensor, recompute_attention: bool = False, attend=None, cu_seqlens=None) -> torch.Tensor:
        if recompute_attention:
            y = checkpoint(self.attention_sublayer, x, None, cu_seqlens, use_reentrant=False)
        else:
            y = self.attention_sublayer(x, attend, cu_seqlens)
        x = self._project_add(y, self.attn.c_proj, x)
        h = self.ops.layer_norm(x, self.ln_2.weight, self.ln_2.bias, self.config.layer_norm_eps)
        h = self.mlp.c_fc(h, activation="gelu")
        return self._project_add(h, self.mlp.c_proj, x)


class Layers(nn.ModuleDict):
    """The blocks by layer index, named "0", "1", ... (a pipeline stage keeps only its own, under
    the same names); layers[i] takes the int index too."""

    def __getitem__(self, index: int | str) -> nn.Module:
        return super().__getitem__(str(index))


class TiedHead(nn.Module):
    """The LM head tied to the token embedding (no parameters of its own): logits over the real
    vocabulary and the mean cross-entropy over the targets that are not -100."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.vocab_size, self.use_gptcore_ops = config.vocab_size, config.use_gptcore_ops

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor | None = None):
        ops = op_set(self.use_gptcore_ops)
        logits = tied_logits(ops, x, embedding, self.vocab_size)
        loss = None if targets is None else ops.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        return logits[..., : self.vocab_size], loss


class GPT(nn.Module):
    """The whole model, or what gptcore.parallel.pipeline_stage leaves of it: a stage without wpe
    (not the first) takes hidden states instead of token ids, and one without ln_f (not the last)
    returns its hidden states instead of (logits, loss)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.n_positions, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=Layers({str(i): Block(config) for i in range(config.n_layer)}),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = TiedHead(config)
        if config.use_gptcore_ops and not gptcore_ops.takes_head_dim(config.head_dim):
            warnings.warn(
                f"gptcore: head dim {config.head_dim} (n_embd {config.n_embd} / n_head {config.n_head}): gptcore's"
                " attention kernels take 32..128 in steps of 8; this model runs attention on PyTorch's reference",
                stacklevel=2,
            )
        # Activation recompute in training: "none", "full" (each block keeps only its input and
        # reruns its forward in the backward) or "selective" (each block's attention sublayer).
        self.recompute = "none"
        self.reset_parameters()

    @property
    def ops(self):  # looked up, not stored: a Python module attribute would break deepcopy and pickling
        return op_set(self.config.use_gptcore_ops, self.config.head_dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, residual projections scaled by 1/sqrt(2 n_layer) so the
        residual stream's variance does not grow with depth; zero biases; unit LN weights."""
        for name, p in self.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            elif name.endswith("c_proj.weight"):
                p.normal_(0.0, 0.02 / math.sqrt(2 * self.config.n_layer))
            else:
                p.normal_(0.0, 0.02)
        self.transformer.wte.weight[self.config.vocab_size :].zero_()  # padding rows: masked out of the logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ):
        """idx [B, T] token ids -> (logits [B, T, vocab_size], mean cross-entropy against targets
        [B, T] or None); targets equal to -100 are ignored. The logits are a view into a row of
        padded_vocab_size columns (see tied_logits); .contiguous() makes a dense copy.

        Packed documents: cu_seqlens int32 [B, S + 1], each row's document boundaries
        (0 = c_0 <= ... <= c_S = T, see gptcore.ops.reference.check_cu_seqlens), keeps every token's
        attention inside its document; position_ids [B, T] (positions restarting in each document)
        replace 0..T-1. A stage past the first takes hidden states as idx and the same cu_seqlens
        (position_ids are the first stage's)."""
        t = self.transformer
        x = self.embed(idx, self._positions(idx, position_ids)) if "wpe" in t else idx
        x = self.blocks(x, cu_seqlens=cu_seqlens)
        if "ln_f" not in t:
            return x
        return self.head(self.final_norm(x), targets)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, T] token ids -> the final hidden states [B, T, n_embd] (after ln_f): what the tied
        LM head reads, and what task heads pool (gptcore.finetune.classify)."""
        return self.final_norm(self.blocks(self.embed(idx, self._positions(idx))))

    def forward_cached(
        self, idx: torch.Tensor, positions: torch.Tensor, attend, every_position: bool = False
    ) -> torch.Tensor:
        """Generation: idx [B, T] at positions (broadcastable to [B, T]) -> logits [B, vocab_size] of
        each row's last token, or [B, T, vocab_size] of every token with every_position (scoring a
        prompt). attend(layer, q, k, v) -> y does each layer's attention over a KV cache
        (gptcore.generate.KVCache); no dropout, no recompute."""
        t = self.transformer
        x = self.blocks(t.wte(idx) + t.wpe(positions), attend)
        if every_position:
            return self.head(self.final_norm(x))[0]
        x = x[:, -1:].contiguous()  # the next-token logits only
        return self.head(self.final_norm(x))[0][:, -1]

    def _positions(self, idx: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq_len = idx.shape[1]
        if seq_len > self.config.n_positions:
            raise ValueError(f"GPT: sequence length {seq_len} exceeds n_positions {self.config.n_positions}")
        if position_ids is None:
            return torch.arange(seq_len, device=idx.device)
        if position_ids.shape != idx.shape:
            raise ValueError(f"GPT: position_ids {list(position_ids.shape)} must be the ids' shape {list(idx.shape)}")
        return position_ids

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings, with dropout in training."""
        t = self.transformer
        return t.drop(t.wte(idx) + t.wpe(positions))

    def blocks(self, x: torch.Tensor, attend=None, cu_seqlens=None) -> torch.Tensor:
        """The blocks in order, recomputed in the backward as self.recompute says (in training);
        cu_seqlens: the packed documents' boundaries (see forward)."""
        recompute = self.recompute if self.training and torch.is_grad_enabled() and attend is None else "none"
        if recompute not in ("none", "full", "selective"):
            raise ValueError(f"GPT.recompute must be 'none', 'full' or 'selective', got {recompute!r}")
        for i, block in enumerate(self.transformer.h.values()):
            if recompute == "full":
                x = checkpoint(block, x, False, None, cu_seqlens, use_reentrant=False)
            else:
                layer_attend = None if attend is None else functools.partial(attend, i)
                x = block(x, recompute == "selective", layer_attend, cu_seqlens)
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        return self.ops.layer_norm(x, t.ln_f.weight, t.ln_f.bias, self.config.layer_norm_eps)

    def head(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        """Final hidden states -> (logits, mean loss or None) through the head tied to wte."""
        return self.lm_head(x, self.transformer.wte.weight, targets)
