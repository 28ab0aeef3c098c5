"""GPTCORE_CUDA's decision, by configuring the project (no compile) against a Python environment
that holds the CPU BLAS wheel and no nvidia-* wheels: AUTO falls back to the CPU kernels and says
why; ON stops. Takes seconds a configure; skipped without cmake (and nvcc, for the CUDA cases)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def configure(tmp_path):
    """configure(GPTCORE_CUDA=...) -> (return code, cmake's output), against site folders that hold
    only scipy_openblas32 (linked from this environment)."""
    scipy_openblas32 = pytest.importorskip("scipy_openblas32")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is absent")
    site = tmp_path / "site"
    site.mkdir()
    (site / "scipy_openblas32").symlink_to(pathlib.Path(scipy_openblas32.__file__).parent)

    def run(cuda: str) -> tuple[int, str]:
        args = ["cmake", "-S", str(ROOT), "-B", str(tmp_path / f"build-{cuda}"), f"-DGPTCORE_CUDA={cuda}"]
        args += ["-DGPTCORE_BUILD_TESTS=OFF", "-DGPTCORE_BUILD_BENCH=OFF", f"-DPython_EXECUTABLE={sys.executable}"]
        args += [f"-DGPTCORE_PYTHON_SITE_DIRS={site}"]
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        p = subprocess.run(args, capture_output=True, text=True, timeout=300)
        # CMake word-wraps error text at about 80 columns wherever the paths in it put the break,
        # so the output is compared with its whitespace runs collapsed to single spaces.
        return p.returncode, " ".join((p.stdout + p.stderr).split())

    return run


needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is absent")


def skip_if_toolkit_has_cublas(output: str) -> None:
    if "gptcore: GPTCORE_CUBLAS: " in output:
        pytest.skip("this CUDA toolkit has cuBLAS, so the wheel-less case cannot be set up")


@needs_nvcc
def test_auto_without_cublas_builds_the_cpu_kernels_and_says_why(configure):
    rc, out = configure("AUTO")
    skip_if_toolkit_has_cublas(out)
    assert rc == 0, out
    assert "gptcore: building the CPU kernels only: cuBLAS not found at build time" in out
    assert "pip install nvidia-cublas, then reinstall" in out
    assert out.count("building the CPU kernels only") == 1  # said once
    # The note compiled into the library, for `gptcore info`.
    assert "CUDA=OFF archs= python=OFF note='cuBLAS not found at build time (pip install nvidia-cublas" in out
    assert "The CUDA compiler identification" not in out  # CUDA never enabled


@needs_nvcc
def test_on_without_cublas_stops(configure):
    rc, out = configure("ON")
    skip_if_toolkit_has_cublas(out)
    assert rc != 0
    assert "GPTCORE_CUDA=ON but cuBLAS not found at build time" in out
    assert "pip install nvidia-cublas" in out


def test_off_says_so(configure):
    rc, out = configure("OFF")
    assert rc == 0, out
    assert "note='GPTCORE_CUDA=OFF'" in out
    assert "building the CPU kernels only" not in out  # asked for, so nothing to explain
