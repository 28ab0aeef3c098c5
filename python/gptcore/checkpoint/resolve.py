"""Any model source to a GPT: an HF GPT-2 folder, a Megatron-LM checkpoint folder, a gptcore model
file, a training checkpoint folder (sharded ones merged) or a save folder (its newest complete
checkpoint)."""

from __future__ import annotations

from pathlib import Path

import torch

from gptcore.checkpoint.folders import find_checkpoint
from gptcore.checkpoint.layout import is_sharded, read_layout
from gptcore.checkpoint.model_file import load_model
from gptcore.checkpoint.names import LAYOUT_FILE, MODEL_FILE
from gptcore.checkpoint.sharded import load_full_state
from gptcore.checkpoint.tokenizer import tokenizer_beside
from gptcore.convert import from_hf, from_megatron, is_megatron_checkpoint
from gptcore.data import load_tokenizer
from gptcore.model import DTYPES, GPT, GPTConfig


def resolve(source) -> tuple[str, Path]:
    """What `source` names: ("hf", folder) for an HF GPT-2 folder (config.json); ("megatron", folder) for a
    Megatron-LM checkpoint (its root or an iteration folder); ("gptcore", file) for a
    gptcore model file; for a training checkpoint folder, or a save folder (its newest complete
    checkpoint), ("gptcore", its model.safetensors), or ("sharded", the folder) when its layout.json
    says it is split over tensor or pipeline ranks."""
    path = Path(source)
    if is_megatron_checkpoint(path):  # first: a ModelScope GPT-3 folder has a config.json too
        return "megatron", path
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", path
    if path.is_dir() and not any((path / name).is_file() for name in (MODEL_FILE, LAYOUT_FILE)):
        found = find_checkpoint(path)
        if found is None:
            raise ValueError(
                f"{source}: no model here (expected an HF GPT-2 folder with config.json, a Megatron-LM checkpoint"
                " folder, a gptcore model file, a checkpoint folder step_N/ or a save folder holding one)"
            )
        path = found
    if path.is_dir():
        if is_sharded(read_layout(path)):
            return "sharded", path
        if not (path / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{path}: checkpoint folder without {MODEL_FILE}")
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such model file or folder")
    return "gptcore", path


def _load_resolved(kind: str, path: Path, overrides: dict) -> GPT:
    if kind == "hf":
        return from_hf(path, **overrides)
    if kind == "megatron":
        return from_megatron(path, **overrides)
    if kind == "sharded":
        # use_gptcore_ops defaults to GPTConfig's (on), as load_model's does
        state, config = load_full_state(path, **({"use_gptcore_ops": True} | overrides))
        model = GPT(config)
        model.load_state_dict(state)
        return model
    return load_model(path, **overrides)


def load_any(source, **overrides) -> GPT:
    """A GPT from whatever `resolve` accepts (a sharded checkpoint's shards merged into the full
    model); `overrides` set GPTConfig fields."""
    kind, path = resolve(source)
    return _load_resolved(kind, path, overrides)


def load_for_inference(source, tokenizer=None, device: str = "auto", dtype: str = "auto", prepare=None):
    """(model in eval mode, tokenizer or None) for generation, evaluation and serving.

    source: anything `resolve` accepts (a sharded checkpoint is merged). The tokenizer is `tokenizer`
    if given, else the one the model came with: a training checkpoint's tokenizer/ copy, a
    `tokenizer/` folder beside a model file, or the tokenizer files of an HF folder. device "auto":
    CUDA when visible. dtype "auto": bf16 on CUDA, fp32 on CPU (gptcore's CPU kernels are float32;
    other dtypes there run on PyTorch ops). prepare(model), when given, runs on the float32 model
    before the cast to device and dtype: where a caller above this layer merges LoRA adapters
    (gptcore.cli.source.merge_adapters), so the merge is done in float32.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA device is visible; use --device cpu")
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose from auto, {', '.join(DTYPES)}")
    use_gptcore_ops = device.type == "cuda" or dtype == "fp32"
    kind, path = resolve(source)
    overrides = dict(use_gptcore_ops=use_gptcore_ops, dropout=0.0, attn_dropout=0.0)
    model = _load_resolved(kind, path, overrides)
    if prepare is not None:
        prepare(model)
    model = model.to(device=device, dtype=DTYPES[dtype]).eval()
    return model, tokenizer_for(model.config, kind, path, tokenizer)


def tokenizer_of(source) -> Path | None:
    """The tokenizer folder that came with the model `source` names (tokenizer_beside), or None."""
    return tokenizer_beside(*resolve(source))


def tokenizer_for(config: GPTConfig, kind: str, path: Path, tokenizer=None):
    """The tokenizer given, else the one that came with the model `resolve` found (kind, path), loaded
    and checked against the model's vocabulary; None when there is none."""
    if tokenizer is None:
        tokenizer = tokenizer_beside(kind, path)
    if tokenizer is None:
        return None
    tokenizer = load_tokenizer(tokenizer)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.name}: vocabulary {tokenizer.vocab_size} is larger than the model's"
            f" {config.vocab_size}; is it the tokenizer this model was trained with?"
        )
    return tokenizer
