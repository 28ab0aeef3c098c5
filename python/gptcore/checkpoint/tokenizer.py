"""The tokenizer a model comes with: copied into a checkpoint's (or a model file's) tokenizer/
folder, found again beside the model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gptcore.checkpoint.names import TOKENIZER_DIR


def copy_tokenizer(source: str | os.PathLike, folder: Path) -> None:
    """Copy a tokenizer (a .model, a tokenizer.json, vocab.json + merges.txt, or a folder of them)
    into folder, which load_tokenizer then reads."""
    source = Path(source)
    folder.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        for name in ("tokenizer.json", "vocab.json", "merges.txt", *(p.name for p in source.glob("*.model"))):
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)
    elif source.name in ("vocab.json", "merges.txt"):
        for name in ("vocab.json", "merges.txt"):
            shutil.copy2(source.with_name(name), folder / name)
    elif source.suffix == ".model":
        shutil.copy2(source, folder / source.name)
    else:
        shutil.copy2(source, folder / "tokenizer.json")


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
