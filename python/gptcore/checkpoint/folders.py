"""Checkpoint folders: one per step, written under a temporary name, completed by a marker file and
renamed into place; `latest` names the newest complete one and is replaced atomically, so a crash at
any moment leaves the previous checkpoint usable. (What goes inside: gptcore.checkpoint.names.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gptcore.checkpoint.names import COMPLETE, LATEST, STEP_DIR, step_dir_name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_checkpoint(
    save: str | os.PathLike, step: int, write_files, keep_last: int, rank: int = 0, barrier=None
) -> Path:
    """Create <save>/step_<step>: `write_files(folder)` fills a temporary folder, then the marker is
    written, the folder renamed, `latest` moved to it and checkpoints beyond the newest `keep_last`
    removed. Returns the checkpoint folder.

    Several processes (a distributed run, on one shared file system): every rank calls it with its
    rank and a `barrier()` over all of them; each writes its own files into the one temporary
    folder, and rank 0 alone creates, completes and publishes it."""
    root = Path(save)
    final = root / step_dir_name(step)
    # One process: a per-process name, so two runs in one folder cannot mix files; several: one shared name.
    tmp = root / (f".{final.name}.tmp{os.getpid()}" if barrier is None else f".{final.name}.tmp")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if barrier is not None:
        barrier()
    write_files(tmp)
    if barrier is not None:
        barrier()
    if rank == 0:
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as f:
                    os.fsync(f.fileno())
        _write_atomic(tmp / COMPLETE, f"{step}\n")
        if final.exists():  # a re-save of the same step (resumed run saving again): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        _write_atomic(root / LATEST, final.name + "\n")
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    if barrier is not None:
        barrier()
    return final


def complete_checkpoints(root: str | os.PathLike) -> list[Path]:
    """The complete checkpoint folders under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: `path` itself if it is a checkpoint folder, else the one its
    `latest` names, else its newest complete one; None if it holds none. An incomplete checkpoint
    named explicitly is an error, not a silent fallback."""
    path = Path(path)
    if STEP_DIR.match(path.name) and path.is_dir():
        if not (path / COMPLETE).is_file():
            raise ValueError(
                f"{path}: checkpoint is incomplete (no {COMPLETE} marker; the run stopped while saving it);"
                " point `load` at an earlier checkpoint or at the save folder"
            )
        return path
    latest = path / LATEST
    if latest.is_file():
        named = path / latest.read_text().strip()
        if (named / COMPLETE).is_file():
            return named
    found = complete_checkpoints(path)
    return found[-1] if found else None
