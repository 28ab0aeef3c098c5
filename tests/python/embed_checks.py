"""Shared by the embedding tests: the installed gptcore's embedder files, or a skip where gptcore is
imported from a source tree (the development setup's PYTHONPATH), which has none. An installed
gptcore without them fails instead: CI installs the package, so there these tests run."""

import shutil
import subprocess
from pathlib import Path

import pytest

from gptcore import native

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "embed"


def installed(getter) -> str:
    """getter() (native.get_include, get_library or get_cmake_dir), or a skip in a source tree."""
    try:
        return getter()
    except FileNotFoundError:
        if (native.PACKAGE.parents[1] / "pyproject.toml").is_file():  # <checkout>/python/gptcore
            pytest.skip(f"gptcore is imported from a source tree ({native.PACKAGE}), not an installed package")
        raise


def cmake_build(source: Path, build: Path, *defines: str) -> Path:
    """Configure and build `source` against the installed gptcore's CMake config; the build folder."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not on PATH")
    configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    configure += [f"-Dgptcore_DIR={installed(native.get_cmake_dir)}", *defines]
    for command in (configure, ["cmake", "--build", str(build)]):
        run = subprocess.run(command, capture_output=True, text=True)
        assert run.returncode == 0, f"{' '.join(command)}:\n{run.stdout}\n{run.stderr}"
    return build
