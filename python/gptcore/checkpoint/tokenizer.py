"""The tokenizer a model comes with: copied into a checkpoint's (or a model file's) tokenizer/
folder, found again beside the model."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from gptcore.checkpoint.names import TOKENIZER_DIR
from gptcore.data.tokenizer import Tokenizer, tokenizer_files


def copy_tokenizer(source: str | os.PathLike | Sequence[str | os.PathLike] | Tokenizer, folder: Path) -> None:
    """Copy a tokenizer (a loaded Tokenizer, a .model, a tokenizer.json, a GPT-2 vocab .json + merges .txt
    under any names, or a folder of them) into folder, under the names load_tokenizer then reads."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(source, str | os.PathLike) and Path(source).is_dir():
        source = Path(source)
        for name in ("tokenizer.json", "vocab.json", "merges.txt", *(p.name for p in source.glob("*.model"))):
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)
        if any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json")) or any(folder.glob("*.model")):
            return
    files = source.files if isinstance(source, Tokenizer) else tokenizer_files(source)
    for name, path in files.items():
        shutil.copy2(path, folder / name)


def tokenizer_beside(kind: str, path: Path) -> Path | None:
    """The tokenizer folder that came with a model `resolve` found (kind, path): an HF folder's own
    files, a checkpoint folder's (or a Megatron checkpoint's) tokenizer/, or the tokenizer/ folder beside a
    model file; None when
    it holds no tokenizer files."""
    folder = {"hf": path, "sharded": path / TOKENIZER_DIR, "megatron": path / TOKENIZER_DIR}.get(
        kind, path.parent / TOKENIZER_DIR
    )
    has_files = (
        folder.is_dir()
        and any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json"))
        or any(folder.glob("*.model"))
    )
    return folder if has_files else None
