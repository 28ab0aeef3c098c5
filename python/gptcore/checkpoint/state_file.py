"""State files: a checkpoint's non-weight state (step counters, loss scaler, optimizer state, RNG
states, config) without pickle, so reading a checkpoint from anywhere never runs code.

`save_state(state, stem)` writes two files: `<stem>.safetensors` holds every tensor (and every
numpy array, as its raw bytes), `<stem>.json` holds everything else, with tensors referenced by
name. The structure is dict (str or int keys), list, tuple, str, int, float (inf and nan too),
bool, None, torch.Tensor (any dtype and device; read back on the CPU) and numpy arrays and
scalars of a plain numeric dtype. `load_state(stem)` gives back an equal structure: the same
types (tuple vs list, int vs float, int keys), dtypes and values. JSON values outside plain ones
are tagged objects, whose keys start with "$":
    {"$tuple": [...]}              a tuple
    {"$dict": [[key, value], ...]} a dict with an int key, or a str key starting with "$"
    {"$float": "inf"}              inf, -inf or nan
    {"$tensor": "3"}               tensor "3" of the .safetensors file
    {"$ndarray": "4", "dtype": "<u4", "shape": [624]}  a numpy array: tensor "4" holds its bytes
    {"$ndarray": "5", "dtype": "<f8", "shape": null}   a numpy scalar

Older gptcore wrote trainer.pt and rank_NNNNN.pt with torch.save; `load_trainer_state` and
`load_rank_state` prefer the state files and read those with torch.load(weights_only=True),
numpy arrays allowed (numpy's RNG state is one), anything else refused with the way forward.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

from gptcore.checkpoint.names import (
    LEGACY_TRAINER_STATE_FILE,
    TRAINER_STATE,
    legacy_rank_file_name,
    rank_state_name,
)

FORMAT = 1
_NUMPY_DTYPE = re.compile(r"[<>|][biuf][1248]")  # bool, int, uint, float: plain bytes, nothing to construct
_FLOAT_NAMES = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_TAGS = {"$tuple": set(), "$dict": set(), "$float": set(), "$tensor": set(), "$ndarray": {"dtype", "shape"}}
_HOLDS = "dict, list, tuple, str, int, float, bool, None, torch.Tensor, numpy array"


def json_path(stem: str | os.PathLike) -> Path:
    stem = Path(stem)
    return stem.with_name(stem.name + ".json")


def tensors_path(stem: str | os.PathLike) -> Path:
    stem = Path(stem)
    return stem.with_name(stem.name + ".safetensors")


def state_exists(stem: str | os.PathLike) -> bool:
    return json_path(stem).is_file()


# ---- writing ----------------------------------------------------------------------------------
class _Encoder:
    def __init__(self, stem: Path):
        self.stem = stem
        self.tensors: dict[str, torch.Tensor] = {}
        self.storages: set[tuple[str, int]] = set()

    def tensor(self, t: torch.Tensor) -> str:
        t = t.detach().cpu().contiguous()
        storage = (str(t.device), t.untyped_storage().data_ptr())
        whole = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if storage in self.storages or not whole:  # safetensors refuses tensors that share memory
            t = t.clone()
        self.storages.add((str(t.device), t.untyped_storage().data_ptr()))
        name = str(len(self.tensors))
        self.tensors[name] = t
        return name

    def array(self, value, path: str) -> dict:
        array = np.asarray(value)
        if not _NUMPY_DTYPE.fullmatch(array.dtype.str):
            raise TypeError(f"{self.stem}: {path} is a numpy {array.dtype} value; it holds plain numbers only")
        raw = torch.from_numpy(np.ascontiguousarray(array).reshape(-1).view(np.uint8).copy())
        shape = None if isinstance(value, np.generic) else list(array.shape)
        return {"$ndarray": self.tensor(raw), "dtype": array.dtype.str, "shape": shape}

    def encode(self, value, path: str):
        if isinstance(value, (np.ndarray, np.generic)):  # before float: numpy's float64 is a float
            return self.array(value, path)
        if value is None or isinstance(value, (bool, str, int)):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, torch.Tensor):
            return {"$tensor": self.tensor(value)}
        if isinstance(value, list):
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"$tuple": [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    kind = type(key).__name__
                    raise TypeError(f"{self.stem}: {path} has the key {key!r} ({kind}); keys are str or int")
            items = {k: self.encode(v, f"{path}[{k!r}]") for k, v in value.items()}
            if all(isinstance(k, str) and not k.startswith("$") for k in items):
                return items
            return {"$dict": [[k, v] for k, v in items.items()]}
        raise TypeError(f"{self.stem}: {path} is a {type(value).__name__}; a state file holds only {_HOLDS}")


def save_state(state, stem: str | os.PathLike) -> None:
    """Write `state` as <stem>.json and <stem>.safetensors; a value of another type is a TypeError
    naming where it is in `state`."""
    stem = Path(stem)
    encoder = _Encoder(stem)
    encoded = encoder.encode(state, "state")
    text = json.dumps({"format": FORMAT, "state": encoded}, allow_nan=False)
    save_file(encoder.tensors, tensors_path(stem))
    json_path(stem).write_text(text + "\n")


# ---- reading ----------------------------------------------------------------------------------
def _refuse_constant(name: str):
    raise ValueError(f"the non-standard JSON constant {name}")


class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.used: set[str] = set()

    def tensor(self, name) -> torch.Tensor:
        if not isinstance(name, str) or name not in self.tensors:
            raise ValueError(f"it names a tensor {name!r} its .safetensors file does not hold")
        self.used.add(name)
        return self.tensors[name]

    def array(self, obj: dict):
        dtype, shape = obj["dtype"], obj["shape"]
        if not (isinstance(dtype, str) and _NUMPY_DTYPE.fullmatch(dtype)):
            raise ValueError(f"a numpy array of dtype {dtype!r}, not a plain numeric one")
        if not (shape is None or (isinstance(shape, list) and all(_count(n) for n in shape))):
            raise ValueError(f"a numpy array of shape {shape!r}")
        raw = self.tensor(obj["$ndarray"])
        if raw.dtype != torch.uint8 or raw.dim() != 1:
            raise ValueError("a numpy array whose tensor is not its bytes (uint8, one dimension)")
        dtype = np.dtype(dtype)
        if raw.numel() != math.prod(shape or []) * dtype.itemsize:
            raise ValueError(f"a numpy array of shape {shape} and dtype {dtype} in {raw.numel()} bytes")
        array = np.frombuffer(raw.numpy().tobytes(), dtype=dtype)
        return array[0] if shape is None else array.reshape(shape).copy()

    def decode(self, value):
        if value is None or isinstance(value, (bool, str, int, float)):
            return value
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):  # json gives nothing else; here for safety
            raise ValueError(f"a {type(value).__name__}")
        tags = [k for k in value if k.startswith("$")]
        if not tags:
            return {k: self.decode(v) for k, v in value.items()}
        tag = tags[0]
        if tag not in _TAGS or set(value) != {tag} | _TAGS[tag]:
            raise ValueError(f"an unknown object {sorted(value)}")
        body = value[tag]
        if tag == "$tensor":
            return self.tensor(body)
        if tag == "$ndarray":
            return self.array(value)
        if tag == "$float":
            if body not in _FLOAT_NAMES:
                raise ValueError(f"a float {body!r} (inf, -inf or nan)")
            return _FLOAT_NAMES[body]
        if not isinstance(body, list):
            raise ValueError(f"a {tag} that is not a list")
        if tag == "$tuple":
            return tuple(self.decode(v) for v in body)
        out = {}
        for pair in body:
            if not (isinstance(pair, list) and len(pair) == 2 and type(pair[0]) in (str, int)):
                raise ValueError(f"a $dict entry {pair!r} (a [str or int key, value] pair)")
            out[pair[0]] = self.decode(pair[1])
        return out


def _count(n) -> bool:
    return type(n) is int and n >= 0


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path}: not a readable gptcore state file ({why}); the checkpoint is damaged or not gptcore's:"
        " resume from another checkpoint, or from its weights alone with init_from=<its folder>"
    )


def load_state(stem: str | os.PathLike):
    """What save_state wrote to <stem>.json and <stem>.safetensors (tensors on the CPU). Anything
    else there is a ValueError naming the file: reading runs no code."""
    stem = Path(stem)
    path = json_path(stem)
    try:
        document = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, RecursionError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise _damaged(path, f"not JSON: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not (isinstance(document, dict) and set(document) == {"format", "state"}):
        raise _damaged(path, 'expected an object with "format" and "state"')
    if document["format"] != FORMAT:
        raise _damaged(path, f"format {document['format']!r}, this gptcore reads format {FORMAT}")
    tensors = tensors_path(stem)
    try:
        decoder = _Decoder(load_file(tensors))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _damaged(tensors, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    try:
        state = decoder.decode(document["state"])
    except (ValueError, RecursionError) as e:
        raise _damaged(path, f"it holds {e}" if str(e) else "nested too deeply") from None
    if decoder.used != set(decoder.tensors):
        extra = len(decoder.tensors) - len(decoder.used)
        raise _damaged(tensors, f"it holds {extra} tensor(s) that {path.name} never names")
    return state


# ---- checkpoints: this format, or an older gptcore's pickles read safely -----------------------
def _numpy_globals() -> list:
    """What torch.load needs to rebuild numpy arrays of plain numeric dtypes (numpy's RNG state):
    the array constructor, the array and dtype classes. None of them runs code it is given."""
    dtype_classes = [type(np.dtype(c)) for c in "?bBhHiIlLqQefdg"]
    return [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),  # numpy 1.x's name for it
        (_reconstruct, "numpy._core.multiarray._reconstruct"),  # numpy 2.x's
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def _legacy_load(path: Path, stem: Path, what: str) -> dict:
    """An older gptcore's torch.save file, through torch.load(weights_only=True); `stem` is the state
    file that replaces it."""
    refusal = (
        f"resume from its weights alone with init_from={path.parent} (fresh optimizer state), or, if you trust"
        f" where it came from, re-save it without pickle: gptcore.checkpoint.state_file.save_state("
        f"torch.load('{path}', weights_only=False), '{stem}')"
    )
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        holds = f"a reference to {found.group(1)}" if found else "an object"
        older = f"{path}: written by an older gptcore with pickle"
        raise ValueError(f"{older}, and it holds {holds} that cannot be read safely; {refusal}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: not a readable {what} ({why}); the checkpoint is damaged: {refusal}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a {what} (a dict); {refusal}")
    return state


def has_trainer_state(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return state_exists(folder / TRAINER_STATE) or (folder / LEGACY_TRAINER_STATE_FILE).is_file()


def save_trainer_state(state: dict, folder: str | os.PathLike) -> None:
    save_state(state, Path(folder) / TRAINER_STATE)


def load_trainer_state(folder: str | os.PathLike) -> dict:
    """A checkpoint's trainer state: trainer_state.json + .safetensors, or an older trainer.pt."""
    folder = Path(folder)
    if not state_exists(folder / TRAINER_STATE) and (folder / LEGACY_TRAINER_STATE_FILE).is_file():
        return _legacy_load(folder / LEGACY_TRAINER_STATE_FILE, folder / TRAINER_STATE, "trainer state")
    return _as_dict(load_state(folder / TRAINER_STATE), json_path(folder / TRAINER_STATE))


def has_rank_state(folder: str | os.PathLike, rank: int) -> bool:
    folder = Path(folder)
    return state_exists(folder / rank_state_name(rank)) or (folder / legacy_rank_file_name(rank)).is_file()


def save_rank_state(state: dict, folder: str | os.PathLike, rank: int) -> None:
    save_state(state, Path(folder) / rank_state_name(rank))


def load_rank_state(folder: str | os.PathLike, rank: int) -> dict:
    """One process's state in a distributed checkpoint: rank_NNNNN.json + .safetensors, or an older rank_NNNNN.pt."""
    folder = Path(folder)
    stem = folder / rank_state_name(rank)
    if not state_exists(stem) and (folder / legacy_rank_file_name(rank)).is_file():
        return _legacy_load(folder / legacy_rank_file_name(rank), stem, "rank state")
    return _as_dict(load_state(stem), json_path(stem))


def _as_dict(state, path: Path) -> dict:
    if not isinstance(state, dict):
        raise _damaged(path, f"its state is a {type(state).__name__}, not a dict")
    return state
