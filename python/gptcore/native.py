"""Where an installed gptcore keeps what an embedder builds against, found the way pybind11 does it:
the C API headers (`get_include()`), libgptcore.so (`get_library()`) and the CMake package config
(`get_cmake_dir()`, for `find_package(gptcore CONFIG)`). Imports nothing but the standard library, so a
NumPy, JAX or C build asks without loading torch; `python -m gptcore --include | --library | --cmake-dir`
prints them for a shell."""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _installed(relative: str) -> str:
    path = PACKAGE / relative
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: this gptcore ({PACKAGE}) is not an installed build "
            "(a source tree?); `pip install .` installs the headers, libgptcore.so and the CMake config"
        )
    return str(path)


def get_include() -> str:
    """The folder to put on the include path: `#include "gptcore/gptcore.h"` finds the C API there."""
    _installed("include/gptcore/gptcore.h")
    return str(PACKAGE / "include")


def get_library() -> str:
    """The path of libgptcore.so: gptcore's C API and kernels, no Python, no torch."""
    return _installed("lib/libgptcore.so")


def get_cmake_dir() -> str:
    """The folder holding gptcoreConfig.cmake: `-Dgptcore_DIR=` for `find_package(gptcore CONFIG)`."""
    _installed("lib/cmake/gptcore/gptcoreConfig.cmake")
    return str(PACKAGE / "lib" / "cmake" / "gptcore")


# `python -m gptcore FLAG` prints one of these.
FLAGS = {"--include": get_include, "--library": get_library, "--cmake-dir": get_cmake_dir}


def print_path(flag: str) -> int:
    """Print what `flag` names; a missing install is one line on stderr and exit code 2."""
    try:
        print(FLAGS[flag]())
    except FileNotFoundError as e:
        print(f"gptcore {flag}: error: {e}", file=sys.stderr)
        return 2
    return 0
