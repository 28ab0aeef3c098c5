"""Megatron-LM GPT checkpoints (the torch layout) to and from a GPT.

A checkpoint folder holds `latest_checkpointed_iteration.txt` (an iteration, or "release") and one
folder per iteration, `iter_0000100/` or `release/`, with a file per tensor x pipeline rank:
`mp_rank_TT/model_optim_rng.pt` (one stage) or `mp_rank_TT_PPP/model_optim_rng.pt`. Each holds a
dict: "model" (the rank's state dict), "checkpoint_version", "iteration", and "args" (Megatron's
argparse.Namespace: the model's shape). Two namings of the same tensors are read:

    megatron-core GPTModel                           legacy Megatron-LM (language_model.*)      gptcore
    embedding.word_embeddings.weight                 embedding.word_embeddings.weight            transformer.wte.weight
    embedding.position_embeddings.weight             embedding.position_embeddings.weight        transformer.wpe.weight
    decoder.layers.N.input_layernorm.*               encoder.layers.N.input_layernorm.*          transformer.h.N.ln_1.*
      (Transformer Engine: self_attention.linear_qkv.layer_norm_weight / _bias)
    decoder.layers.N.self_attention.linear_qkv.*     encoder.layers.N.self_attention.query_key_value.*   .attn.c_attn.*
    decoder.layers.N.self_attention.linear_proj.*    encoder.layers.N.self_attention.dense.*     .attn.c_proj.*
    decoder.layers.N.pre_mlp_layernorm.*             encoder.layers.N.post_attention_layernorm.* .ln_2.*
      (Transformer Engine: mlp.linear_fc1.layer_norm_weight / _bias)
    decoder.layers.N.mlp.linear_fc1.*                encoder.layers.N.mlp.dense_h_to_4h.*        .mlp.c_fc.*
    decoder.layers.N.mlp.linear_fc2.*                encoder.layers.N.mlp.dense_4h_to_h.*        .mlp.c_proj.*
    decoder.final_layernorm.*                        encoder.final_layernorm.*                   transformer.ln_f.*
    output_layer.weight (untied, or the last stage's copy)                                       tied to wte

ModelScope's GPT-3 (DistributedGPT3: nlp_gpt3_text-generation_1.3B / 2.7B / 13B) is the same model
in DeepSpeed's file names: `config.json` (GPT3Config: num_attention_heads, layernorm_epsilon, ...)
beside `model/mp_rank_TT_model_states.pt`, one file per tensor rank, whose "module" entry holds the
legacy names, flat. Its config stands in for Megatron's args.

Tensor-parallel ranks hold row blocks of the column-parallel weights (QKV, fc1, the vocabulary) and
column blocks of the row-parallel ones (proj, fc2); pipeline stages number their layers from 0.
Megatron's QKV rows are interleaved per head, [heads, 3 (q, k, v), head_dim], where gptcore's are
[3, heads, head_dim]. Files are read with torch.load(weights_only=True), argparse.Namespace allowed
(Megatron's args) and inert stand-ins for Megatron's enums and Transformer Engine's _extra_state: no
code from the file runs.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import warnings
from pathlib import Path

import torch

from gptcore.convert.hf import model_state
from gptcore.model import GPT, GPTConfig

ITERATION_FILE = "latest_checkpointed_iteration.txt"
RANK_FILE = "model_optim_rng.pt"
CHECKPOINT_VERSION = 3.0

_RANK_DIR = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?$")
_ITERATION_DIR = re.compile(r"(iter_\d{7}|release)$")
_MODELSCOPE_FILE = re.compile(r"mp_rank_(\d{2})_model_states\.pt$")  # DeepSpeed's name, in ModelScope's model/

# Legacy per-layer names -> megatron-core's
_LEGACY_LAYER = {
    "self_attention.query_key_value.": "self_attention.linear_qkv.",
    "attention.query_key_value.": "self_attention.linear_qkv.",
    "self_attention.dense.": "self_attention.linear_proj.",
    "attention.dense.": "self_attention.linear_proj.",
    "post_attention_layernorm.": "pre_mlp_layernorm.",
    "mlp.dense_h_to_4h.": "mlp.linear_fc1.",
    "mlp.dense_4h_to_h.": "mlp.linear_fc2.",
    # Transformer Engine's layer norms fused into the next linear
    "self_attention.linear_qkv.layer_norm_": "input_layernorm.",
    "mlp.linear_fc1.layer_norm_": "pre_mlp_layernorm.",
}
_LEGACY_PREFIX = {
    "language_model.embedding.": "embedding.",
    "language_model.encoder.": "decoder.",
    "language_model.transformer.": "decoder.",
    "language_model.output_layer.": "output_layer.",
    "word_embeddings_for_head.": "output_layer.",  # the last pipeline stage's copy of the tied embedding
}
# megatron-core name (after decoder.layers.N.) -> gptcore's (after transformer.h.N.)
_LAYER_NAMES = {
    "input_layernorm": "ln_1",
    "self_attention.linear_qkv": "attn.c_attn",
    "self_attention.linear_proj": "attn.c_proj",
    "pre_mlp_layernorm": "ln_2",
    "mlp.linear_fc1": "mlp.c_fc",
    "mlp.linear_fc2": "mlp.c_proj",
}
_COLUMN_PARALLEL = ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias", "mlp.linear_fc1.weight",
                    "mlp.linear_fc1.bias", "word_embeddings.weight", "output_layer.weight")  # fmt: skip
_ROW_PARALLEL = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


def is_megatron_checkpoint(path) -> bool:
    """Whether path is a Megatron checkpoint folder: its root (latest_checkpointed_iteration.txt) or an
    iteration folder (iter_NNNNNNN/ or release/ with mp_rank_* folders), or a ModelScope GPT-3 folder
    (model/mp_rank_TT_model_states.pt) or its model/ folder."""
    path = Path(path)
    return path.is_dir() and (
        (path / ITERATION_FILE).is_file()
        or any(_RANK_DIR.match(p.name) for p in path.glob("mp_rank_*"))
        or _modelscope_files(path) is not None
    )


def _modelscope_files(path: Path) -> Path | None:
    """The folder of a ModelScope GPT-3's mp_rank_TT_model_states.pt files: path/model or path; None."""
    for folder in (path / "model", path):
        if folder.is_dir() and any(_MODELSCOPE_FILE.match(p.name) for p in folder.glob("mp_rank_*")):
            return folder
    return None


def _modelscope_args(folder: Path) -> argparse.Namespace | None:
    """A ModelScope GPT-3's config.json (beside its model/ folder) as the Megatron args it stands for."""
    for config in (folder / "config.json", folder.parent / "config.json"):
        if config.is_file():
            try:
                cfg = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ValueError(f"{config}: not a readable JSON config ({e})") from None
            return argparse.Namespace(
                num_attention_heads=cfg.get("num_attention_heads"),
                layernorm_epsilon=cfg.get("layernorm_epsilon", 1e-12),  # GPT3Config's default
                apply_residual_connection_post_layernorm=cfg.get("apply_residual_connection_post_layernorm", False),
                openai_gelu=cfg.get("hidden_act") in ("gelu_new", "gelu_pytorch_tanh", "openai_gelu"),
            )
    return None


def iteration_folder(path) -> Path:
    """The iteration folder a Megatron checkpoint path names: the one latest_checkpointed_iteration.txt
    points at, or path itself."""
    path = Path(path)
    if not (path / ITERATION_FILE).is_file():
        return _modelscope_files(path) or path
    latest = (path / ITERATION_FILE).read_text().strip()
    folder = path / ("release" if latest == "release" else f"iter_{int(latest):07d}" if latest.isdigit() else latest)
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: {ITERATION_FILE} says {latest!r} but {folder.name}/ is missing")
    return folder


def _rank_files(folder: Path) -> dict[tuple[int, int], Path]:
    """{(tp rank, pp rank): its model_optim_rng.pt} of an iteration folder, the whole grid present."""
    files = {}
    for rank_dir in folder.glob("mp_rank_*"):
        match = _RANK_DIR.match(rank_dir.name)
        if match:
            files[int(match[1]), int(match[2] or 0)] = rank_dir / RANK_FILE
        elif match := _MODELSCOPE_FILE.match(rank_dir.name):
            files[int(match[1]), 0] = rank_dir
    if not files and ((folder / "metadata.json").is_file() or any(folder.glob("*.distcp"))):
        raise ValueError(
            f"{folder}: a megatron-core distributed checkpoint (torch_dist); gptcore reads Megatron's torch format:"
            " convert it with Megatron (load it and save with --ckpt-format torch)"
        )
    if not files:
        raise FileNotFoundError(f"{folder}: no mp_rank_TT[_PPP]/{RANK_FILE} here (not a Megatron checkpoint iteration)")
    tp, pp = max(t for t, _ in files) + 1, max(p for _, p in files) + 1
    grid = [(t, p) for t in range(tp) for p in range(pp)]
    missing = [
        f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "") for t, p in grid if not files.get((t, p), Path()).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"{folder}: {RANK_FILE} of rank folder(s) {', '.join(missing)} missing (tp={tp} x pp={pp})"
        )
    return files


class _Inert:
    """Stands in for a Megatron class (an enum in its args, such as AttnBackend) when a file is read:
    keeps what the file gives it and runs nothing of the class it replaces."""

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state


# Classes of these packages in a checkpoint (args' enums), and the BytesIO of Transformer Engine's
# _extra_state (FP8 metadata, unused here), are read as _Inert stand-ins.
_STAND_IN_PACKAGES = ("megatron.", "transformer_engine.", "apex.", "_io.BytesIO")
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def read_rank_file(path: Path) -> dict:
    """One rank's file through torch.load(weights_only=True): tensors, plain containers and
    argparse.Namespace (Megatron's args), classes of Megatron's packages as inert stand-ins; anything
    else is refused with a ValueError."""
    allowed: list = [argparse.Namespace]
    for _ in range(64):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = _REFUSED_GLOBAL.search(str(e))
            if not found or not found[1].startswith(_STAND_IN_PACKAGES):
                what = found[1] if found else "objects"
                raise ValueError(
                    f"{path}: holds {what} beyond tensors and args, and gptcore does not run code from a checkpoint"
                    " (torch.load weights_only=True); re-save it in Megatron's environment with only its 'model',"
                    " 'checkpoint_version' and 'args' entries, or convert it with Megatron's"
                    " tools/checkpoint/convert.py"
                ) from None
            allowed.append((type(found[1].rpartition(".")[2], (_Inert,), {}), found[1]))
    raise ValueError(f"{path}: too many Megatron classes in the file to stand in for")


def _flatten(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested state dicts (legacy Megatron nests language_model / embedding / encoder) to dotted names;
    entries that are not tensors (_extra_state) dropped."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flatten(value, name + ".")
        elif isinstance(value, torch.Tensor) and not name.endswith("._extra_state"):
            flat[name] = value
    return flat


def _core_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A rank's state dict under megatron-core's names (legacy and Transformer Engine names mapped;
    a DeepSpeed 'module.' prefix dropped)."""
    out = {}
    for name, value in state.items():
        name = name.removeprefix("module.")
        for old, new in _LEGACY_PREFIX.items():
            if name.startswith(old):
                name = new + name[len(old) :]
        if name.startswith("decoder.layers."):
            head, _, rest = name.partition(".layers.")
            index, _, rest = rest.partition(".")
            for old, new in _LEGACY_LAYER.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            name = f"decoder.layers.{index}.{rest}"
        out[name] = value
    return out


def _args(checkpoint: dict) -> argparse.Namespace | None:
    args = checkpoint.get("args")
    return args if isinstance(args, argparse.Namespace) else None


def _check_args(args: argparse.Namespace | None, source) -> None:
    """ValueError for a Megatron model gptcore's GPT is not (from its args, where saved)."""
    if args is None:
        return
    refused = [
        ("swiglu", True, "SwiGLU MLP"),
        ("untie_embeddings_and_output_weights", True, "an output layer untied from the embedding"),
        ("position_embedding_type", "rope", "rotary positions"),
        ("normalization", "RMSNorm", "RMSNorm"),
        ("apply_residual_connection_post_layernorm", True, "post-LN residuals"),
        ("group_query_attention", True, "grouped-query attention"),
        ("num_experts", lambda n: n not in (None, 0, 1), "mixture of experts"),
    ]
    for key, bad, what in refused:
        value = getattr(args, key, None)
        if (bad(value) if callable(bad) else value == bad) and value is not None:
            raise ValueError(f"{source}: a Megatron model with {what} ({key}={value!r}); gptcore's GPT-2/3 has not")
    if getattr(args, "add_bias_linear", True) is False:
        raise ValueError(f"{source}: a Megatron model without linear biases (add_bias_linear=False); gptcore's has")


def _merge(shards: list[dict[str, torch.Tensor]], name: str, heads: int) -> torch.Tensor:
    """One tensor from the tensor-parallel ranks' pieces (QKV in gptcore's [3, heads, head_dim] rows)."""
    pieces = [s[name] for s in shards]
    if name.endswith(("linear_qkv.weight", "linear_qkv.bias")):
        # each rank: [its heads, 3, head_dim, ...] -> [3, its heads * head_dim, ...], ranks joined by head
        local = heads // len(pieces)
        if pieces[0].shape[0] % (3 * local):
            raise ValueError(f"{name}: {pieces[0].shape[0]} rows do not split into {local} heads x 3 (q, k, v)")
        parts = [p.reshape(local, 3, -1, *p.shape[1:]).transpose(0, 1) for p in pieces]
        merged = torch.cat(parts, dim=1)
        return merged.reshape(-1, *pieces[0].shape[1:]).contiguous()
    if name.endswith(_COLUMN_PARALLEL):
        return torch.cat(pieces, dim=0)
    if name.endswith(_ROW_PARALLEL):
        return torch.cat(pieces, dim=1)
    return pieces[0]


def _heads(args, config_heads: int | None, source) -> int:
    heads = config_heads or getattr(args, "num_attention_heads", None)
    if not heads:
        raise ValueError(
            f"{source}: the checkpoint saves no args to tell its number of attention heads; give it"
            " (gptcore convert megatron-import --num-attention-heads H, or n_head=H)"
        )
    return heads


def read_megatron(path, n_head: int | None = None) -> tuple[dict[str, torch.Tensor], dict, argparse.Namespace | None]:
    """(the full model's state dict under megatron-core's names, QKV already in gptcore's order,
    GPTConfig fields read from it, args or None) of a Megatron checkpoint folder (root or iteration)."""
    folder = iteration_folder(path)
    files = _rank_files(folder)
    tp, pp = max(t for t, _ in files) + 1, max(p for _, p in files) + 1
    state, layer_offset, args, heads = {}, 0, None, None
    for stage in range(pp):
        checkpoints = [read_rank_file(files[t, stage]) for t in range(tp)]
        if "model" not in checkpoints[0] and "module" not in checkpoints[0]:
            raise ValueError(f"{files[0, stage]}: no 'model' entry (not a Megatron model checkpoint)")
        version = checkpoints[0].get("checkpoint_version", CHECKPOINT_VERSION)
        if version is not None and float(version) < 2.0:
            raise ValueError(
                f"{files[0, stage]}: checkpoint_version {version} orders QKV the old way; load and re-save it with"
                " Megatron-LM (checkpoint_version >= 2.0) first"
            )
        args = args or _args(checkpoints[0]) or _modelscope_args(folder)
        _check_args(args, path)
        heads = heads or _heads(args, n_head, path)
        if heads % tp:
            raise ValueError(f"{path}: {heads} attention heads do not split over tensor-parallel size {tp}")
        shards = [_core_names(_flatten(c.get("model", c.get("module")))) for c in checkpoints]
        layers = set()
        for name in shards[0]:
            merged = _merge(shards, name, heads)
            match = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
            if match:
                layers.add(int(match[1]))
                name = f"decoder.layers.{int(match[1]) + layer_offset}.{match[2]}"
            state[name] = merged
        layer_offset += len(layers)
    if "embedding.word_embeddings.weight" not in state:
        raise ValueError(f"{path}: no embedding.word_embeddings.weight (not a Megatron GPT checkpoint)")
    wte = state["embedding.word_embeddings.weight"]
    head = state.pop("output_layer.weight", None)
    if head is not None and not torch.equal(head, wte):
        raise ValueError(f"{path}: output_layer.weight differs from the word embeddings; gptcore ties them")
    fields = dict(
        vocab_size=wte.shape[0],
        n_positions=state["embedding.position_embeddings.weight"].shape[0],
        n_layer=layer_offset,
        n_head=heads,
        n_embd=wte.shape[1],
        layer_norm_eps=float(getattr(args, "layernorm_epsilon", 1e-5) or 1e-5),
    )
    ffn = state["decoder.layers.0.mlp.linear_fc1.weight"].shape[0] if layer_offset else 4 * fields["n_embd"]
    if ffn != 4 * fields["n_embd"]:
        raise ValueError(f"{path}: ffn_hidden_size {ffn} is not 4 * hidden_size = {4 * fields['n_embd']}")
    return state, fields, args


def _gptcore_state(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in state.items():
        match = re.match(r"decoder\.layers\.(\d+)\.(.*)\.(weight|bias)$", name)
        if match and match[2] in _LAYER_NAMES:
            out[f"transformer.h.{match[1]}.{_LAYER_NAMES[match[2]]}.{match[3]}"] = value
        elif name.startswith("decoder.final_layernorm."):
            out["transformer.ln_f." + name.rpartition(".")[2]] = value
        elif name == "embedding.position_embeddings.weight":
            out["transformer.wpe.weight"] = value
        elif name == "embedding.word_embeddings.weight":
            rows = value[: config.vocab_size]
            padding = value.new_zeros(config.padded_vocab_size - rows.shape[0], value.shape[1])
            out["transformer.wte.weight"] = torch.cat([rows, padding])
        else:
            raise ValueError(f"unexpected tensor {name} in a Megatron GPT checkpoint")
    return out


def from_megatron(path, **overrides) -> GPT:
    """A GPT from a Megatron-LM GPT checkpoint folder (its root or an iteration folder), every tensor and
    pipeline rank merged. `overrides` set GPTConfig fields: n_head where the checkpoint saves no args,
    vocab_size to drop Megatron's padding rows (default: every row of the embedding)."""
    state, fields, args = read_megatron(path, overrides.get("n_head"))
    if args is not None and not getattr(args, "openai_gelu", False):
        warnings.warn(
            f"{path}: trained with Megatron's erf GELU (no --openai-gelu); gptcore runs the tanh GELU, so logits"
            " differ slightly from Megatron's",
            stacklevel=2,
        )
    config = GPTConfig(**(fields | overrides))
    if config.vocab_size > fields["vocab_size"]:
        raise ValueError(f"{path}: vocab_size {config.vocab_size} exceeds the checkpoint's {fields['vocab_size']} rows")
    model = GPT(config)
    result = model.load_state_dict(_gptcore_state(state, config), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: missing tensors for {', '.join(result.missing_keys[:4])} (incomplete checkpoint?)")
    return model


def to_megatron(model: GPT, out, tensor_parallel: int = 1, pipeline_parallel: int = 1) -> Path:
    """Write `model` as a Megatron-LM checkpoint (megatron-core names, torch layout) split over
    tensor x pipeline ranks: OUT/latest_checkpointed_iteration.txt ("release") and
    OUT/release/mp_rank_TT[_PPP]/model_optim_rng.pt with "model", "checkpoint_version" 3.0, "iteration"
    0 and "args" (the shape, as Megatron's --use-checkpoint-args reads it). Returns OUT."""
    c = model.config
    T, P = tensor_parallel, pipeline_parallel
    if T < 1 or P < 1:
        raise ValueError(f"tensor and pipeline parallel sizes must be >= 1, got {T} x {P}")
    if c.n_head % T:
        raise ValueError(f"cannot split {c.n_head} attention heads over tensor-parallel size {T}")
    if c.n_layer % P:
        raise ValueError(f"cannot split {c.n_layer} layers into {P} equal pipeline stages")
    if not c.bias:
        raise ValueError("Megatron GPT checkpoints have linear biases; this model was built with bias=False")
    state = {k: v.detach().cpu().float() for k, v in model_state(model).items()}
    multiple = 128 * T  # Megatron's padded vocabulary: a multiple of make_vocab_size_divisible_by x tp
    rows = math.ceil(c.vocab_size / multiple) * multiple
    wte = state["transformer.wte.weight"][: c.vocab_size]
    wte = torch.cat([wte, wte.new_zeros(rows - c.vocab_size, c.n_embd)])
    args = argparse.Namespace(
        num_layers=c.n_layer, hidden_size=c.n_embd, ffn_hidden_size=4 * c.n_embd, num_attention_heads=c.n_head,
        kv_channels=c.head_dim, max_position_embeddings=c.n_positions, seq_length=c.n_positions,
        padded_vocab_size=rows, make_vocab_size_divisible_by=128, layernorm_epsilon=c.layer_norm_eps,
        tensor_model_parallel_size=T, pipeline_model_parallel_size=P, normalization="LayerNorm",
        position_embedding_type="learned_absolute", openai_gelu=True, swiglu=False, add_bias_linear=True,
        untie_embeddings_and_output_weights=False, hidden_dropout=c.dropout, attention_dropout=c.attn_dropout,
        num_query_groups=None, group_query_attention=False, apply_residual_connection_post_layernorm=False,
    )  # fmt: skip
    folder = Path(out) / "release"
    per_stage = c.n_layer // P
    for p in range(P):
        for t in range(T):
            shard = _megatron_shard(state, wte, c, t, T, range(p * per_stage, (p + 1) * per_stage), p == 0, p == P - 1)
            rank_dir = folder / (f"mp_rank_{t:02d}" + (f"_{p:03d}" if P > 1 else ""))
            rank_dir.mkdir(parents=True, exist_ok=True)
            checkpoint = dict(model=shard, checkpoint_version=CHECKPOINT_VERSION, iteration=0, args=args)
            torch.save(checkpoint, rank_dir / RANK_FILE)
    (Path(out) / ITERATION_FILE).write_text("release\n")
    return Path(out)


def _megatron_shard(state, wte, c: GPTConfig, t: int, T: int, layers, first: bool, last: bool) -> dict:
    def column(x):
        return x.chunk(T, dim=0)[t].clone()

    def row(x):
        return x.chunk(T, dim=1)[t].clone()

    shard = {}
    if first:
        shard["embedding.word_embeddings.weight"] = column(wte)
        shard["embedding.position_embeddings.weight"] = state["transformer.wpe.weight"].clone()
    for local, i in enumerate(layers):
        ours, theirs = f"transformer.h.{i}.", f"decoder.layers.{local}."
        for core, name in _LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                value = state[f"{ours}{name}.{kind}"]
                if core == "self_attention.linear_qkv":  # [3, heads, D] rows -> [heads, 3, D], then split by head
                    value = value.reshape(3, c.n_head, c.head_dim, -1).transpose(0, 1).reshape(value.shape)
                split = column if core in ("self_attention.linear_qkv", "mlp.linear_fc1") else None
                if kind == "weight" and core in ("self_attention.linear_proj", "mlp.linear_fc2"):
                    split = row
                shard[f"{theirs}{core}.{kind}"] = split(value) if split else value.clone()
    if last:
        shard["decoder.final_layernorm.weight"] = state["transformer.ln_f.weight"].clone()
        shard["decoder.final_layernorm.bias"] = state["transformer.ln_f.bias"].clone()
        if not first:  # the last stage's copy of the tied embedding (megatron-core's output_layer)
            shard["output_layer.weight"] = column(wte)
    return shard
