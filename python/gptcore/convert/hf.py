"""Hugging Face GPT-2 import/export.

HF GPT-2 stores its linear layers as Conv1D with weights [in, out]; gptcore uses F.linear's
[out, in], so those weights are transposed both ways. gptcore pads the embedding rows to a
multiple of `pad_vocab_multiple`; import pads with zero rows, export drops them. The LM head is
tied to the embedding: HF writes no `lm_head.weight` and ties it on load.

A folder's weights: model.safetensors, pytorch_model.bin, or their shards named by
model.safetensors.index.json / pytorch_model.bin.index.json (save_pretrained's max_shard_size);
.bin files are read with torch.load(weights_only=True), never unpickling code.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gptcore.model import GPT, GPTConfig

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
    """A GPT from a Hugging Face GPT-2: a directory with config.json + model.safetensors or
    pytorch_model.bin (or their shards and index), or a GPT2LMHeadModel. `overrides` set GPTConfig
    fields (e.g. use_gptcore_ops=False, dropout=0.0)."""
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        hf_config = json.loads((directory / "config.json").read_text())
        hf_state = read_hf_state(directory)
    else:
        hf_config = source.config.to_dict()
        hf_state = {k: v.detach() for k, v in source.state_dict().items()}
    config = _config_from_hf(hf_config, **overrides)
    model = GPT(config)
    model.load_state_dict(_state_from_hf(hf_state, config))
    return model


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_hf_state(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of an HF folder: its one weights file, or every shard its index names."""
    for name in _WEIGHT_FILES:
        if (directory / name).is_file():
            return _read_weights(directory / name)
    for name in _WEIGHT_FILES:
        index = directory / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{index}: not an HF shard index (no weight_map of tensor -> file: {e})") from e
            missing = [f for f in shards if not (directory / f).is_file()]
            if missing:
                raise FileNotFoundError(f"{directory}: shard(s) {', '.join(missing)} named by {index.name} are missing")
            state = {}
            for shard in shards:
                state |= _read_weights(directory / shard)
            return state
    raise FileNotFoundError(
        f"{directory}: HF folder without weights (model.safetensors, pytorch_model.bin, or a sharded"
        " model.safetensors.index.json / pytorch_model.bin.index.json)"
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        state = None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path}: holds more than tensors, and gptcore does not run code from a checkpoint"
            " (torch.load weights_only=True); resave it with safetensors (save_pretrained(safe_serialization=True))"
        )
    return state


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


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    """The GPT's weights to export: its state dict; ValueError if it holds LoRA adapter factors
    (gptcore.finetune.lora.merge_and_unload folds them into the weights and gives the plain model)."""
    state = model.state_dict()
    factors = [name for name in state if name.endswith((".lora_A", ".lora_B"))]
    if factors:
        raise ValueError(
            f"the model has LoRA adapters not merged into its weights ({factors[0]}, ...): merge_and_unload(model)"
            " first (or save the adapters alone with gptcore.finetune.lora.save_adapters)"
        )
    return state


# gptcore's tokenizer files -> (the files an HF folder holds, the class AutoTokenizer builds from them)
_HF_TOKENIZERS = (
    (("tokenizer.json",), "PreTrainedTokenizerFast"),
    (("vocab.json", "merges.txt"), "GPT2TokenizerFast"),
)


def save_hf_tokenizer(folder: Path, directory, config: GPTConfig) -> bool:
    """The tokenizer in `folder` (gptcore's tokenizer/ copy, or an HF folder) written into an HF
    directory: its files and a tokenizer_config.json, so AutoTokenizer.from_pretrained(directory) and
    `gptcore generate --checkpoint directory` read it. A SentencePiece .model is copied for gptcore
    (transformers needs a tokenizer.json to load it). False when `folder` holds no tokenizer."""
    directory = Path(directory)
    for names, tokenizer_class in _HF_TOKENIZERS:
        if all((folder / n).is_file() for n in names):
            for name in names:
                if (folder / name).resolve() != (directory / name).resolve():
                    shutil.copy2(folder / name, directory / name)
            tokenizer_config = {"tokenizer_class": tokenizer_class, "model_max_length": config.n_positions}
            # GPT-2's end of document as HF's special tokens when the vocabulary has it (else none:
            # GPT2TokenizerFast would add its default as a new id beyond the model's vocabulary)
            eos = "<|endoftext|>" if "<|endoftext|>" in _vocabulary(folder / names[0]) else None
            tokenizer_config |= {"bos_token": eos, "eos_token": eos, "unk_token": eos}
            (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
            return True
    models = sorted(folder.glob("*.model"))
    for model in models:
        shutil.copy2(model, directory / model.name)
    return bool(models)


def _vocabulary(path: Path) -> dict:
    """The token -> id map of a vocab.json, or of a tokenizer.json (its model's and added tokens)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if path.name == "vocab.json":
        return data
    vocab = data.get("model", {}).get("vocab")
    return (vocab if isinstance(vocab, dict) else {}) | {t["content"]: t["id"] for t in data.get("added_tokens", [])}
