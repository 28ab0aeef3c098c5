"""Hugging Face GPT-2 import/export, and gptcore's single-file model format.

HF GPT-2 stores its linear layers as Conv1D with weights [in, out]; gptcore uses F.linear's
[out, in], so those weights are transposed both ways. gptcore pads the embedding rows to a
multiple of `pad_vocab_multiple`; import pads with zero rows, export drops them. The LM head is
tied to the embedding: HF writes no `lm_head.weight` and ties it on load.

gptcore model file (`save` / `load`): one safetensors file holding the state dict, with the
GPTConfig as JSON under the metadata key "gptcore_config". A sharded training checkpoint (a step
folder with layout.json and one such file per (tp_rank, pp_rank): gptcore.parallel.checkpoint) is
read by `resolve` / `load_any` / `load_for_inference` as the full model, its shards merged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gptcore.model import DTYPES, GPT, GPTConfig

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


def _config_from_hf(hf: dict, **overrides) -> GPTConfig:
    n_embd = hf["n_embd"]
    if hf.get("activation_function", "gelu_new") not in _GELU_TANH:
        raise ValueError(f"from_hf: activation_function {hf['activation_function']!r} is not the tanh GELU")
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise ValueError(f"from_hf: n_inner {hf['n_inner']} is not 4 * n_embd = {4 * n_embd}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise ValueError(f"from_hf: {flag}=True is not supported")
    if hf.get("scale_attn_weights") is False:
        raise ValueError("from_hf: scale_attn_weights=False is not supported")
    fields = dict(
        vocab_size=hf["vocab_size"],
        n_positions=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=n_embd,
        dropout=hf.get("resid_pdrop", 0.0),
        attn_dropout=hf.get("attn_pdrop", 0.0),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    )
    return GPTConfig(**(fields | overrides))


def _state_from_hf(hf_state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in hf_state.items():
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if name.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of older checkpoints
            continue
        state[name] = value.t().contiguous() if name.endswith(_CONV1D) else value
    wte = state["transformer.wte.weight"]
    head = state.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, wte):
        raise ValueError("from_hf: lm_head.weight differs from transformer.wte.weight; gptcore ties them")
    padding = wte.new_zeros(config.padded_vocab_size - wte.shape[0], wte.shape[1])
    state["transformer.wte.weight"] = torch.cat([wte, padding])
    return state


def from_hf(source, **overrides) -> GPT:
    """A GPT from a Hugging Face GPT-2: a directory with config.json + model.safetensors (or
    pytorch_model.bin), or a
    GPT2LMHeadModel. `overrides` set GPTConfig fields (e.g. use_gptcore_ops=False, dropout=0.0)."""
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        hf_config = json.loads((directory / "config.json").read_text())
        if (directory / "model.safetensors").is_file():
            hf_state = load_file(directory / "model.safetensors")
        elif (directory / "pytorch_model.bin").is_file():
            hf_state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"{directory}: HF folder without model.safetensors or pytorch_model.bin")
    else:
        hf_config = source.config.to_dict()
        hf_state = {k: v.detach() for k, v in source.state_dict().items()}
    config = _config_from_hf(hf_config, **overrides)
    model = GPT(config)
    model.load_state_dict(_state_from_hf(hf_state, config))
    return model


def _hf_config(config: GPTConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.attn_dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": config.vocab_size - 1,
        "eos_token_id": config.vocab_size - 1,
        "torch_dtype": "float32",
    }


def to_hf(model: GPT, directory) -> Path:
    """Write `model` as a Hugging Face GPT-2 directory: config.json + model.safetensors, loadable
    with GPT2LMHeadModel.from_pretrained(directory). Returns the directory."""
    config = model.config
    if not config.bias:
        raise ValueError("to_hf: HF GPT-2 has biases everywhere; this model was built with bias=False")
    state = {}
    for name, value in model_state(model).items():
        value = value.detach().cpu()
        if name == "transformer.wte.weight":
            value = value[: config.vocab_size]
        state[name] = value.t().contiguous() if name.endswith(_CONV1D) else value.contiguous()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(_hf_config(config), indent=2) + "\n")
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


CONFIG_KEY = "gptcore_config"  # the safetensors metadata key holding the GPTConfig as JSON


def save_state(
    state: dict[str, torch.Tensor], config: GPTConfig, path, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write a gptcore model file: `state` (any tensors keyed by GPT parameter names: a full state
    dict or one shard of it) as safetensors, `config` in its metadata (without use_gptcore_ops,
    which is a choice of whoever runs the model, not part of it), plus `extra_metadata` (strings).
    Returns the path."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    saved = config.to_dict()
    del saved["use_gptcore_ops"]
    metadata = {CONFIG_KEY: json.dumps(saved)}
    for key, value in (extra_metadata or {}).items():
        if key == CONFIG_KEY or not isinstance(value, str):
            raise ValueError(f"save_state: extra metadata {key!r}={value!r}: string values, not {CONFIG_KEY!r}")
        metadata[key] = value
    save_file(tensors, path, metadata=metadata)
    return path


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """The GPT's weights to export: its state dict, less the factors of LoRA adapters that are merged
    into the weights (gptcore.finetune.lora.merge_lora); ValueError if an adapter is not merged."""
    adapted = [m for m in model.modules() if getattr(m, "lora_A", None) is not None]
    if any(not m.merged for m in adapted):
        raise ValueError(
            "the model has LoRA adapters not merged into its weights: merge_lora(model) first (or save the"
            " adapters alone with gptcore.finetune.lora.save_adapters)"
        )
    return {k: v for k, v in model.state_dict().items() if not k.endswith((".lora_A", ".lora_B"))}


def save(model: GPT, path) -> None:
    """gptcore's model file: the model's weights (model_state) and config (save_state)."""
    save_state(model_state(model), model.config, path)


def read_metadata(path) -> dict[str, str]:
    """The metadata of a gptcore model file; ValueError if `path` is not one."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"{path}: not a safetensors file ({e})") from None
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: not a gptcore model file (no {CONFIG_KEY!r} metadata)")
    return metadata


def config_from_metadata(metadata: dict[str, str], **overrides) -> GPTConfig:
    """The GPTConfig a gptcore model file's metadata holds, with `overrides` set."""
    return GPTConfig(**(json.loads(metadata[CONFIG_KEY]) | overrides))


def load(path, **overrides) -> GPT:
    """A GPT from a file written by `save`; `overrides` set GPTConfig fields."""
    model = GPT(config_from_metadata(read_metadata(path), **overrides))
    model.load_state_dict(load_file(path))
    return model


def resolve(source) -> tuple[str, Path]:
    """What `source` names: ("hf", folder) for an HF GPT-2 folder (config.json); ("gptcore", file) for a
    gptcore model file; for a training checkpoint folder, or a save folder (its newest complete
    checkpoint), ("gptcore", its model.safetensors), or ("sharded", the folder) when its layout.json
    says it is split over tensor or pipeline ranks."""
    from gptcore.parallel.checkpoint import LAYOUT_FILE, read_layout
    from gptcore.training.checkpoint import find_checkpoint

    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        return "hf", path
    if path.is_dir() and not any((path / name).is_file() for name in ("model.safetensors", LAYOUT_FILE)):
        found = find_checkpoint(path)
        if found is None:
            raise ValueError(
                f"{source}: no model here (expected an HF GPT-2 folder with config.json, a gptcore model file,"
                " a checkpoint folder step_N/ or a save folder holding one)"
            )
        path = found
    if path.is_dir():
        layout = read_layout(path)
        if (layout["tensor_parallel"], layout["pipeline_parallel"]) != (1, 1):
            return "sharded", path
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"{path}: checkpoint folder without model.safetensors")
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such model file or folder")
    return "gptcore", path


def _load_resolved(kind: str, path: Path, overrides: dict) -> GPT:
    if kind == "hf":
        return from_hf(path, **overrides)
    if kind == "sharded":
        from gptcore.parallel.checkpoint import load_full_state

        # use_gptcore_ops defaults to GPTConfig's (on), as `load`'s does
        state, config = load_full_state(path, **({"use_gptcore_ops": True} | overrides))
        model = GPT(config)
        model.load_state_dict(state)
        return model
    return load(path, **overrides)


def load_any(source, **overrides) -> GPT:
    """A GPT from whatever `resolve` accepts (a sharded checkpoint's shards merged into the full
    model); `overrides` set GPTConfig fields."""
    kind, path = resolve(source)
    return _load_resolved(kind, path, overrides)


def load_for_inference(source, tokenizer=None, device: str = "auto", dtype: str = "auto", lora=None):
    """(model in eval mode, tokenizer or None) for generation, evaluation and serving.

    source: anything `resolve` accepts (a sharded checkpoint is merged). The tokenizer is `tokenizer`
    if given, else the one the model came with: a training checkpoint's tokenizer/ copy, a
    `tokenizer/` folder beside a model file, or the tokenizer files of an HF folder. device "auto":
    CUDA when visible. dtype "auto": bf16 on CUDA, fp32 on CPU (gptcore's CPU kernels are float32;
    other dtypes there run on PyTorch ops). lora: a LoRA adapter file (gptcore.finetune.lora.
    save_adapters) whose adapters are merged into the weights, in float32 before the cast to dtype.
    """
    from gptcore.data import load_tokenizer

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
    if lora is not None:
        from gptcore.finetune.lora import apply_adapters

        apply_adapters(model, lora, merge=True)
    model = model.to(device=device, dtype=DTYPES[dtype]).eval()
    if tokenizer is None:
        folder = {"hf": path, "sharded": path / "tokenizer"}.get(kind, path.parent / "tokenizer")
        has_files = (
            folder.is_dir()
            and any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json"))
            or any(folder.glob("*.model"))
        )
        tokenizer = folder if has_files else None
    if tokenizer is not None:
        tokenizer = load_tokenizer(tokenizer)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer.name}: vocabulary {tokenizer.vocab_size} is larger than the model's"
                f" {model.config.vocab_size}; is it the tokenizer this model was trained with?"
            )
    return model, tokenizer
