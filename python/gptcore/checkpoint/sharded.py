"""The model of a tensor / pipeline parallel run as one file per (tp, pp) rank.

    step_N/model.safetensors  when tp == pp == 1: the plain gptcore model file (model_file)
    step_N/model_tp{t:02d}_pp{p:02d}.safetensors
                              otherwise: shard (t, p) as parallel.reshard.split cuts it (GPT's
                              parameter names), with the FULL model's GPTConfig in metadata
                              "gptcore_config" and "tp_rank", "pp_rank", "tensor_parallel",
                              "pipeline_parallel"
    step_N/layout.json        the layout (checkpoint.layout)

`load_full_state` merges any checkpoint's model back into a full GPT state dict; `load_shard_for`
gives one rank of another layout its shard (a checkpoint loaded under a different tp x pp);
`reshard_checkpoint` writes a checkpoint's weights in a new layout (`gptcore convert reshard`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from gptcore.checkpoint.folders import find_checkpoint, write_checkpoint
from gptcore.checkpoint.layout import describe, read_layout, write_layout
from gptcore.checkpoint.model_file import read_model_metadata, save_model_state, saved_config
from gptcore.checkpoint.names import (
    CONFIG_FILE,
    LAYOUT_FILE,
    MODEL_FILE,
    SHARD_FILE,
    SHARD_KEYS,
    TOKENIZER_DIR,
    check_parallel_sizes,
    model_file_name,
    step_of,
)
from gptcore.checkpoint.state_file import has_trainer_state, load_trainer_state, save_trainer_state
from gptcore.model import GPTConfig
from gptcore.parallel.pipeline import stage_state_dict
from gptcore.parallel.reshard import Shards, _expected_state, check_layout, check_state, merge, split
from gptcore.parallel.tensor_parallel import shard_state_dict


def _expected_shard(config: GPTConfig, tp_rank: int, pp_rank: int, tp: int, pp: int) -> dict[str, torch.Tensor]:
    """Shard (tp_rank, pp_rank)'s names and shapes, on the meta device (no storage)."""
    full = _expected_state(config)
    return shard_state_dict(stage_state_dict(full, pp_rank, pp, config.n_layer), tp_rank, tp)


def save_model_shard(
    state: dict[str, torch.Tensor], config: GPTConfig, folder, tp_rank: int, pp_rank: int, tp: int, pp: int
) -> Path:
    """Write rank (tp_rank, pp_rank)'s shard of a tp x pp layout (reshard.split's entries for it;
    the full state dict for 1 x 1) as folder/model_file_name(...), with `config` the FULL model's.
    ValueError if the entries or shapes are not that shard's. Returns the file."""
    name = model_file_name(tp_rank, pp_rank, tp, pp)
    check_layout(config, tp, pp)
    expected = _expected_shard(config, tp_rank, pp_rank, tp, pp)
    check_state(state, expected, f"save_model_shard: the state of shard ({tp_rank}, {pp_rank}) of tp={tp} x pp={pp}")
    extra = None
    if (tp, pp) != (1, 1):
        extra = dict(zip(SHARD_KEYS, map(str, (tp_rank, pp_rank, tp, pp))))
    ordered = {key: state[key] for key in expected}
    return save_model_state(ordered, config, Path(folder) / name, extra_metadata=extra)


def _read_shard_metadata(path: Path, tp_rank: int, pp_rank: int, layout: dict) -> dict[str, str]:
    metadata = read_model_metadata(path)
    tp, pp = layout["tensor_parallel"], layout["pipeline_parallel"]
    if (tp, pp) != (1, 1):
        want = dict(zip(SHARD_KEYS, map(str, (tp_rank, pp_rank, tp, pp))))
        got = {k: metadata.get(k) for k in SHARD_KEYS}
        if got != want:
            raise ValueError(
                f"{path}: its metadata says {got}, but layout.json ({describe(layout)}) and the file name say {want}"
            )
    return metadata


def _shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("model_tp*_pp*.safetensors") if SHARD_FILE.match(p.name))


def _check_files(folder: Path, layout: dict) -> dict[tuple[int, int], Path]:
    tp, pp = layout["tensor_parallel"], layout["pipeline_parallel"]
    files = {(t, p): folder / model_file_name(t, p, tp, pp) for p in range(pp) for t in range(tp)}
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        how = "layout.json says" if (folder / LAYOUT_FILE).is_file() else "without layout.json, it is"
        present = [name for name in [MODEL_FILE, *_shard_files(folder)] if (folder / name).is_file()]
        raise FileNotFoundError(
            f"{folder}: missing model file(s) {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
            f" ({how} a {describe(layout)} checkpoint; model files present: {', '.join(present) or 'none'})"
        )
    return files


def _config(saved: dict, overrides: dict) -> GPTConfig:
    """A checkpoint's GPTConfig. use_gptcore_ops is not saved (a choice of whoever runs the model)
    and is False unless `overrides` set it: these configs describe shapes and names."""
    return GPTConfig(**(saved | {"use_gptcore_ops": False} | overrides))


def _in_order(state: dict[str, torch.Tensor], order) -> dict[str, torch.Tensor]:
    """`state` in GPT's parameter order (safetensors reads names sorted), unknown names last."""
    return {**{k: state[k] for k in order if k in state}, **state}


def load_model_shards(folder, **overrides) -> tuple[Shards, GPTConfig, dict]:
    """(shards {(tp_rank, pp_rank): state dict}, the full model's GPTConfig, the layout) of a
    checkpoint folder (1 x 1: {(0, 0): model.safetensors's state}). `overrides` set GPTConfig
    fields; use_gptcore_ops, which a checkpoint does not hold, is False unless they set it. Errors
    name the missing file(s) and the layout, and every shard must hold the same config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    layout = read_layout(folder)
    files = _check_files(folder, layout)
    shards: Shards = {}
    saved = None
    for (t, p), path in files.items():
        this = saved_config(_read_shard_metadata(path, t, p, layout))
        if saved is None:
            saved, first = this, path
        elif this != saved:
            diff = sorted(k for k in set(saved) | set(this) if saved.get(k) != this.get(k))
            raise ValueError(
                f"{folder}: {path.name} and {first.name} hold different model configs (differing in {diff});"
                " the shards are not from one checkpoint"
            )
        shards[(t, p)] = load_file(path)
    config = _config(saved, overrides)
    order = _expected_state(config)
    return {key: _in_order(state, order) for key, state in shards.items()}, config, layout


def load_full_state(folder, **overrides) -> tuple[dict[str, torch.Tensor], GPTConfig]:
    """(the full GPT state dict, GPTConfig) of a checkpoint folder, sharded or not: its shards
    merged (reshard.merge). `overrides` set GPTConfig fields (as load_model_shards's)."""
    shards, config, layout = load_model_shards(folder, **overrides)
    try:
        return merge(shards, config), config
    except ValueError as e:
        raise ValueError(f"{folder} ({describe(layout)}): {e}") from None


def load_shard_for(
    folder, tp: int, pp: int, tp_rank: int, pp_rank: int, **overrides
) -> tuple[dict[str, torch.Tensor], GPTConfig]:
    """(state, full model's GPTConfig) of rank (tp_rank, pp_rank) in a tp x pp layout, from a
    checkpoint folder of any layout: its own file when the layouts match, else the checkpoint merged
    (every shard read) and cut as reshard.split would. `overrides` set GPTConfig fields (as
    load_model_shards's)."""
    folder = Path(folder)
    model_file_name(tp_rank, pp_rank, tp, pp)  # validates sizes and ranks
    layout = read_layout(folder)
    if (layout["tensor_parallel"], layout["pipeline_parallel"]) == (tp, pp):
        path = _check_files(folder, layout)[(tp_rank, pp_rank)]
        config = _config(saved_config(_read_shard_metadata(path, tp_rank, pp_rank, layout)), overrides)
        return _in_order(load_file(path), _expected_state(config)), config
    full, config = load_full_state(folder, **overrides)
    try:
        check_layout(config, tp, pp)
    except ValueError as e:
        raise ValueError(f"{folder}: cannot load under tp={tp} x pp={pp}: {e}") from None
    return shard_state_dict(stage_state_dict(full, pp_rank, pp, config.n_layer), tp_rank, tp), config


def _model_config(folder: Path, layout: dict) -> GPTConfig:
    """The config a checkpoint's first model file holds."""
    path = _check_files(folder, layout)[(0, 0)]
    return _config(saved_config(read_model_metadata(path)), {})


def reshard_checkpoint(source, out, tp: int, pp: int) -> Path:
    """Write the weights of checkpoint `source` (a step_N folder, or a save folder: its newest
    complete checkpoint) in a tp x pp layout as out/step_N (same step; completed and made `latest`
    as training does), with layout.json (data_parallel and zero_stage null: weights only),
    the trainer state file holding the source's global state without "optimizer" and "rng", and config.yaml and
    tokenizer/ copied when present. Per-rank optimizer state is not carried over. Returns out/step_N."""
    check_parallel_sizes(tp, pp)
    found = find_checkpoint(source)
    if found is None:
        raise ValueError(f"{source}: no complete checkpoint here (expected a step_N folder or a save folder)")
    step = step_of(found)
    if step is None:
        raise ValueError(f"{found}: not a step_N checkpoint folder")
    layout = read_layout(found)
    config = _model_config(found, layout)
    try:
        check_layout(config, tp, pp)
    except ValueError as e:
        raise ValueError(f"cannot reshard {found} to tp={tp} x pp={pp}: {e}") from None
    if Path(out).resolve() == found.parent.resolve():
        raise ValueError(f"{out}: is the source's save folder; the new checkpoint would replace {found}")

    full, _ = load_full_state(found)
    shards = split(full, config, tp, pp)
    del full
    trainer_state = None
    if has_trainer_state(found):
        trainer_state = {k: v for k, v in load_trainer_state(found).items() if k not in ("optimizer", "rng")}

    def write(folder: Path) -> None:
        for (t, p), state in sorted(shards.items(), key=lambda item: (item[0][1], item[0][0])):
            save_model_shard(state, config, folder, t, p, tp, pp)
        write_layout(folder, tp, pp)
        if trainer_state is not None:
            save_trainer_state(trainer_state, folder)
        if (found / CONFIG_FILE).is_file():
            shutil.copy2(found / CONFIG_FILE, folder / CONFIG_FILE)
        if (found / TOKENIZER_DIR).is_dir():
            shutil.copytree(found / TOKENIZER_DIR, folder / TOKENIZER_DIR)

    # keep_last: every checkpoint already in `out` stays.
    return write_checkpoint(os.fspath(out), step, write, keep_last=sys.maxsize)
