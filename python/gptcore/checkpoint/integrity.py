"""Whether a checkpoint folder is what was written: its COMPLETE marker is a manifest, every file's
size and SHA-256 (so `sha256sum` can check one by hand), written last; `verify` reads the files
back against it, and checks what a manifest cannot vouch for in checkpoints written before there
was one (COMPLETE holding only the step): each safetensors file's header and length.

    {"format": "gptcore-checkpoint", "version": 1, "step": 100,
     "files": {"model.safetensors": {"size": 497759232, "sha256": "9f2c..."}, ...}}
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gptcore.checkpoint.names import COMPLETE

MANIFEST_FORMAT = "gptcore-checkpoint"
_CHUNK = 1 << 22


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(folder: Path, step: int) -> dict:
    """The manifest of every file under folder (COMPLETE and temporary files aside)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name != COMPLETE and ".tmp" not in path.name:
            files[name] = {"size": path.stat().st_size, "sha256": file_digest(path)}
    return {"format": MANIFEST_FORMAT, "version": 1, "step": step, "files": files}


@dataclass
class Verdict:
    """What verify found in one checkpoint folder: problems as (file, what is wrong); manifest:
    whether it had one (an older checkpoint is checked for readable safetensors files only)."""

    folder: Path
    problems: list[tuple[str, str]] = field(default_factory=list)
    manifest: bool = False
    files: int = 0
    bytes: int = 0

    @property
    def intact(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """One line: intact (how it was checked), or the first problem and how many more."""
        if self.intact:
            how = (
                "sizes and SHA-256 match its manifest" if self.manifest else "no manifest: safetensors framing checked"
            )
            return f"{self.folder}: intact ({self.files} files, {_size(self.bytes)}; {how})"
        name, what = self.problems[0]
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        return f"{self.folder}: damaged: {name}: {what}{more}"


def verify(folder: str | os.PathLike) -> Verdict:
    """Check a checkpoint folder against its manifest (or, written before manifests, its
    safetensors files' headers and lengths). Never raises for what it finds: see Verdict.problems."""
    folder = Path(folder)
    verdict = Verdict(folder)
    marker = folder / COMPLETE
    if not marker.is_file():
        verdict.problems.append(
            (COMPLETE, "missing: the checkpoint was never completed (the run stopped while saving)")
        )
        return verdict
    manifest = _read_manifest(marker, verdict)
    if manifest is None:
        if not verdict.problems:  # a marker of an older gptcore: the step number alone
            _check_safetensors_files(folder, verdict)
        return verdict
    verdict.manifest = True
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            verdict.problems.append((name, "missing"))
            continue
        size = path.stat().st_size
        verdict.files += 1
        verdict.bytes += size
        if size != entry["size"]:
            cut = " (truncated)" if size < entry["size"] else ""
            verdict.problems.append((name, f"{size} bytes, the manifest says {entry['size']}{cut}"))
        elif file_digest(path) != entry["sha256"]:
            verdict.problems.append((name, "its contents differ from the manifest (SHA-256 mismatch)"))
    return verdict


def verify_file(path: str | os.PathLike) -> Verdict:
    """A lone model file: a safetensors file's header and length (nothing to compare its bytes with)."""
    path = Path(path)
    verdict = Verdict(path, files=1, bytes=path.stat().st_size)
    if path.suffix != ".safetensors":
        verdict.problems.append((path.name, "not a .safetensors file: only checkpoints and model files are checked"))
    elif (problem := safetensors_problem(path, verdict.bytes)) is not None:
        verdict.problems.append((path.name, problem))
    return verdict


def _read_manifest(marker: Path, verdict: Verdict) -> dict | None:
    text = marker.read_text(errors="replace").strip()
    if text.isdigit():
        return None
    try:
        manifest = json.loads(text)
        files = manifest["files"]
        ok = manifest.get("format") == MANIFEST_FORMAT and isinstance(files, dict)
        ok = ok and all(
            isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
            for e in files.values()
        )
        ok = ok and all(".." not in Path(name).parts and not Path(name).is_absolute() for name in files)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        verdict.problems.append((COMPLETE, "not a gptcore checkpoint manifest (damaged marker)"))
        return None
    return manifest


def _check_safetensors_files(folder: Path, verdict: Verdict) -> None:
    for path in sorted(folder.rglob("*.safetensors")):
        size = path.stat().st_size
        verdict.files += 1
        verdict.bytes += size
        if (problem := safetensors_problem(path, size)) is not None:
            verdict.problems.append((path.relative_to(folder).as_posix(), problem))


def safetensors_problem(path: Path, size: int) -> str | None:
    """What is wrong with a safetensors file's framing (None: its header parses and its length is the
    one the header implies)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return f"{size} bytes: its header says it is longer (truncated)"
            header = json.loads(f.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError):
        return "not a readable safetensors file (damaged header)"
    if size != 8 + length + end:
        return f"{size} bytes, its header says {8 + length + end}" + (" (truncated)" if size < 8 + length + end else "")
    return None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
