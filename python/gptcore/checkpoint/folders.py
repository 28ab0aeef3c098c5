"""Checkpoint folders: one per step, written under a temporary name, completed by a marker file (the
manifest of every file: gptcore.checkpoint.integrity) and renamed into place; `latest` names the
newest complete one and is replaced atomically, so a crash at any moment leaves the previous
checkpoint usable. Resuming verifies a checkpoint against its manifest and, when the newest is
damaged, says which file and takes the newest intact one; nothing damaged is ever deleted. (What
goes inside: gptcore.checkpoint.names.)

GPTCORE_CRASH_AT=<point> kills the process with SIGKILL at that point (`crash_point`): how the tests
interrupt a run at its worst moments. Points: save-N:files-written (step N's files written, no marker
yet), save-N:renamed (renamed into place, `latest` not yet moved), step-N (inside step N, its
gradients computed, before its update)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from gptcore.checkpoint.integrity import Verdict, build_manifest, verify, verify_file
from gptcore.checkpoint.names import COMPLETE, LATEST, STEP_DIR, step_dir_name, step_of

log = logging.getLogger("gptcore.checkpoint")
CRASH_ENV = "GPTCORE_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process here when GPTCORE_CRASH_AT names this point (fault injection for tests)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


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
    """Create <save>/step_<step>: `write_files(folder)` fills a temporary folder, then the marker (the
    manifest) is written, the folder renamed, `latest` moved to it and older checkpoints beyond the
    newest `keep_last` removed (never one of a later step, e.g. left by a run resumed from an earlier
    one; a damaged one of this step is moved aside, not deleted). Returns the checkpoint folder.

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
        crash_point(f"save-{step}:files-written")
        _write_atomic(tmp / COMPLETE, json.dumps(build_manifest(tmp, step), indent=1) + "\n")
        if final.exists():  # a re-save of the same step (a resumed run saving again)
            _replace(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        crash_point(f"save-{step}:renamed")
        _write_atomic(root / LATEST, final.name + "\n")
        older = [p for p in complete_checkpoints(root) if step_of(p) < step]
        for old in older[: max(len(older) - (keep_last - 1), 0)]:
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


def _replace(final: Path) -> None:
    """Make way for a new checkpoint of final's step: an intact one is removed, a damaged one moved
    aside (final.damaged, .damaged2, ...), never deleted."""
    if verify(final).intact:
        shutil.rmtree(final)
        return
    n = 1
    while (aside := final.with_name(f"{final.name}.damaged{n if n > 1 else ''}")).exists():
        n += 1
    os.replace(final, aside)
    log.warning("%s was damaged; moved aside to %s", final, aside.name)


def find_checkpoint(path: str | os.PathLike, on_damaged: Callable[[str], None] | None = None) -> Path | None:
    """The checkpoint to resume from: `path` itself if it is a checkpoint folder, else the one its
    `latest` names, else its newest complete one; None if it holds none. Each is verified against its
    manifest first: a damaged one is reported through on_damaged (default: the log) and the next
    older one tried. A checkpoint named explicitly must be intact (ValueError naming the bad file);
    so must one of a save folder's (ValueError listing what is wrong with each)."""
    path = Path(path)
    if STEP_DIR.match(path.name) and path.is_dir():
        verdict = verify(path)
        if not verdict.intact:
            raise ValueError(f"{verdict.describe()}; point `load` at an earlier checkpoint or at the save folder")
        return path
    damaged = []
    for folder in _resume_order(path):
        verdict = verify(folder)
        if verdict.intact:
            return folder
        damaged.append(verdict.describe())
        (on_damaged or log.warning)(f"{damaged[-1]}; trying an older checkpoint")
    if damaged:
        raise ValueError(f"{path}: no intact checkpoint: " + "; ".join(damaged))
    return None


def _resume_order(root: Path) -> list[Path]:
    """The complete checkpoints under root in the order a resume tries them: the one `latest` names,
    then the others newest first."""
    candidates = complete_checkpoints(root)[::-1]
    latest = root / LATEST
    if latest.is_file():
        named = root / latest.read_text(errors="replace").strip()
        if named in candidates:  # first, in case step numbers went back (a run resumed from an earlier one)
            candidates.remove(named)
            candidates.insert(0, named)
    return candidates


def verify_checkpoints(path: str | os.PathLike) -> tuple[list[Verdict], Path | None]:
    """(a verdict for each checkpoint under path, oldest first, or for path itself when it is one;
    the checkpoint a resume from path would take, None when none is intact). A model file gets its
    safetensors framing checked. ValueError for a path that holds no checkpoint."""
    path = Path(path)
    if path.is_file():
        return [verify_file(path)], None
    if STEP_DIR.match(path.name) and path.is_dir():
        verdict = verify(path)
        return [verdict], path if verdict.intact else None
    if not path.is_dir():
        raise ValueError(f"{path}: no such file or folder")
    folders = sorted((p for p in path.iterdir() if STEP_DIR.match(p.name) and p.is_dir()), key=step_of)
    if not folders:
        raise ValueError(
            f"{path}: no checkpoint (step_N folder) in it; name a save folder, a step_N folder or a model file"
        )
    verdicts = [verify(f) for f in folders]
    intact = {v.folder for v in verdicts if v.intact}  # each folder read once: no second verify for the choice
    chosen = next((f for f in _resume_order(path) if f in intact), None)
    return verdicts, chosen
