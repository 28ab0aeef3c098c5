"""The C99 embedding (examples/embed/c): built with CMake against the installed package's config,
it runs layer norm, cross-entropy and attention on its own buffers and checks them itself."""

import subprocess

from embed_checks import EXAMPLES, cmake_build


def test_c_program_builds_against_the_installed_package_and_passes(tmp_path):
    build = cmake_build(EXAMPLES / "c", tmp_path / "build")
    run = subprocess.run([str(build / "embed_c")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    for op in ("layer norm", "cross-entropy", "attention"):
        assert op in run.stdout
