"""layout.json: how a checkpoint's model is split over tensor and pipeline ranks.

{"format": 1, "tensor_parallel": tp, "pipeline_parallel": pp, "data_parallel": dp or null,
 "zero_stage": z or null}
(absent: a single-process checkpoint, tp = pp = dp = 1, zero stage 0)
"""

from __future__ import annotations

import json
from pathlib import Path

from gptcore.checkpoint.names import LAYOUT_FILE, check_parallel_sizes, non_negative_int, positive_int

LAYOUT_FORMAT = 1


def write_layout(folder, tp: int, pp: int, dp: int | None = None, zero_stage: int | None = None) -> Path:
    """Write folder/layout.json; dp and zero_stage are None for a checkpoint holding weights only
    (no per-rank optimizer state). Returns the file."""
    check_parallel_sizes(tp, pp)
    if dp is not None and not positive_int(dp):
        raise ValueError(f"checkpoint layout: the data-parallel size must be a positive integer or None, got {dp!r}")
    if zero_stage is not None and not non_negative_int(zero_stage):
        raise ValueError(f"checkpoint layout: zero_stage must be a non-negative integer or None, got {zero_stage!r}")
    layout = {
        "format": LAYOUT_FORMAT,
        "tensor_parallel": tp,
        "pipeline_parallel": pp,
        "data_parallel": dp,
        "zero_stage": zero_stage,
    }
    path = Path(folder) / LAYOUT_FILE
    path.write_text(json.dumps(layout, indent=2) + "\n")
    return path


def read_layout(folder) -> dict:
    """{"tensor_parallel", "pipeline_parallel", "data_parallel", "zero_stage"} of a checkpoint
    folder; a folder without layout.json is a single-process checkpoint (1, 1, 1, 0). ValueError
    for a malformed file."""
    path = Path(folder) / LAYOUT_FILE
    if not path.is_file():
        return {"tensor_parallel": 1, "pipeline_parallel": 1, "data_parallel": 1, "zero_stage": 0}
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    expected = (
        '{"format": 1, "tensor_parallel": TP, "pipeline_parallel": PP, "data_parallel": DP|null, "zero_stage": Z|null}'
    )
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object {expected}, got {type(raw).__name__}")
    if raw.get("format") != LAYOUT_FORMAT:
        raise ValueError(
            f"{path}: format {raw.get('format')!r}; this gptcore reads format {LAYOUT_FORMAT} (expected {expected})"
        )
    layout = {}
    for key in ("tensor_parallel", "pipeline_parallel"):
        if not positive_int(raw.get(key)):
            raise ValueError(f"{path}: {key!r} must be a positive integer, got {raw.get(key)!r} (expected {expected})")
        layout[key] = raw[key]
    dp, zero = raw.get("data_parallel"), raw.get("zero_stage")
    if dp is not None and not positive_int(dp):
        raise ValueError(f"{path}: 'data_parallel' must be a positive integer or null, got {dp!r}")
    if zero is not None and not non_negative_int(zero):
        raise ValueError(f"{path}: 'zero_stage' must be a non-negative integer or null, got {zero!r}")
    layout["data_parallel"], layout["zero_stage"] = dp, zero
    return layout


def is_sharded(layout: dict) -> bool:
    """Whether a layout splits the model over tensor or pipeline ranks (one model file per rank)."""
    return (layout["tensor_parallel"], layout["pipeline_parallel"]) != (1, 1)


def describe(layout: dict) -> str:
    return f"tp={layout['tensor_parallel']} x pp={layout['pipeline_parallel']}"
