"""What an installed gptcore gives an embedder: the headers, libgptcore.so exporting the versioned C
API (gc_* and nothing else), the CMake config, all found without torch; and _C linking that library
rather than carrying a second copy of the kernels."""

import ctypes
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from embed_checks import installed

import gptcore
from gptcore import _C, native

FLAGS = {"--include": native.get_include, "--library": native.get_library, "--cmake-dir": native.get_cmake_dir}


def _symbols(path: str, *options: str) -> list[tuple[str, str]]:
    """(type, name) of each dynamic symbol nm lists with `options`."""
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not on PATH")
    run = subprocess.run(["nm", "-D", *options, path], capture_output=True, text=True, check=True)
    return [
        (fields[-2], fields[-1]) for fields in (line.split() for line in run.stdout.splitlines()) if len(fields) > 1
    ]


# A function declaration in a public header: a line starting with its return type (or GC_API), up to the name.
DECLARATION = re.compile(r"^(?!typedef|#|/\*| |\}|extern)([^(;\n]*?)\b(gc_\w+)\(", re.MULTILINE)
SOURCE_HEADERS = Path(__file__).resolve().parents[2] / "csrc" / "include" / "gptcore"


def _declared_functions(include: Path) -> set[str]:
    """The functions the public headers under `include` declare."""
    return {name for header in (include / "gptcore").glob("*.h") for _, name in DECLARATION.findall(header.read_text())}


def test_every_public_function_is_marked_for_export():
    # libgptcore.so is compiled hidden: a declaration without GC_API would not be exported (api.h says how).
    unmarked = [
        f"{header.name}: {name}"
        for header in sorted(SOURCE_HEADERS.glob("*.h"))
        for prefix, name in DECLARATION.findall(header.read_text())
        if not prefix.startswith("GC_API ")
    ]
    assert not unmarked, "declarations without GC_API (write `GC_API <type> gc_name(...)`): " + ", ".join(unmarked)
    assert len(_declared_functions(SOURCE_HEADERS.parent)) > 50


def test_the_paths_exist_and_python_m_gptcore_prints_them():
    include = Path(installed(native.get_include))
    assert (include / "gptcore" / "gptcore.h").is_file()
    assert Path(native.get_library()).name == "libgptcore.so"
    assert (Path(native.get_cmake_dir()) / "gptcoreConfig.cmake").is_file()
    assert gptcore.get_include is native.get_include
    for flag, getter in FLAGS.items():
        run = subprocess.run([sys.executable, "-m", "gptcore", flag], capture_output=True, text=True, check=True)
        assert run.stdout.strip() == getter()


def test_finding_the_files_imports_no_torch():
    installed(native.get_library)
    code = "import sys, gptcore; gptcore.get_include(); gptcore.get_library(); gptcore.get_cmake_dir(); "
    code += "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_source_tree_gets_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "PACKAGE", tmp_path / "gptcore")
    with pytest.raises(FileNotFoundError, match="not an installed build"):
        native.get_library()
    assert native.print_path("--cmake-dir") == 2


def test_only_gc_symbols_are_exported_and_every_declared_function_is():
    library = installed(native.get_library)
    exported = {name for kind, name in _symbols(library, "--defined-only")}
    assert exported, "nm found no dynamic symbols"
    assert not {name for name in exported if not name.startswith("gc_")}
    declared = _declared_functions(Path(native.get_include()))
    assert {"gc_version", "gc_api_version", "gc_layer_norm_fwd", "gc_attention_fwd"} <= declared
    assert declared == exported, "declared but not exported (GC_API missing?) or exported but undeclared"


def test_the_api_version_and_package_version_match_the_headers():
    lib = ctypes.CDLL(installed(native.get_library))
    lib.gc_version.restype = ctypes.c_char_p
    header = (Path(native.get_include()) / "gptcore" / "version.h").read_text()
    assert lib.gc_api_version() == int(re.search(r"#define GPTCORE_API_VERSION (\d+)", header).group(1))
    assert lib.gc_version().decode() == gptcore.__version__ == _C.build_info()["version"]


def test_public_headers_include_only_the_c_standard_library_and_each_other():
    include = Path(installed(native.get_include)) / "gptcore"
    for header in include.glob("*.h"):
        for name in re.findall(r'^#include [<"]([^>"]+)[>"]', header.read_text(), re.MULTILINE):
            assert name in ("stddef.h", "stdint.h") or name.startswith("gptcore/"), f"{header.name} includes {name}"


def test_the_extension_links_the_shared_library_instead_of_a_copy():
    library = installed(native.get_library)
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not on PATH")
    dynamic = subprocess.run(["readelf", "-d", _C.__file__], capture_output=True, text=True, check=True).stdout
    assert "[libgptcore.so]" in dynamic  # NEEDED
    assert not [name for _, name in _symbols(_C.__file__, "--defined-only") if name.startswith("gc_")]
    assert ("U", "gc_layer_norm_fwd") in _symbols(_C.__file__, "--undefined-only")
    assert Path(library).parent == Path(_C.__file__).parent / "lib"
