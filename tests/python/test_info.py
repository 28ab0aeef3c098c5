"""`gptcore info` says which build this is and why: a CPU build names what was missing, a CUDA build
its architectures and NCCL (or what it lacks)."""

import re

import pytest

import gptcore
from gptcore import _C, cli
from gptcore.training.config import ConfigError
from gptcore.training.trainer import resolve_device

CPU_REASONS = ("nvcc not found", "no CUDA toolkit found", "cuBLAS not found at build time", "GPTCORE_CUDA=OFF")


def info_lines(capsys) -> list[str]:
    assert cli.main(["info"]) in (0, None)
    return capsys.readouterr().out.splitlines()


def test_info_states_the_build_and_why(capsys):
    b = _C.build_info()
    lines = info_lines(capsys)
    assert re.fullmatch(r"gptcore \d+\.\d+\.\d+", lines[0])
    build = lines[1]
    if b["cuda"]:
        assert build.startswith(f"  build: CUDA (archs {b['cuda_archs']}); ")
        assert b["cuda_archs"]
        nccl = build.split("; ", 1)[1]
        assert nccl.startswith("NCCL ") if b["nccl_version"] else nccl == b["note"] and "NCCL" in nccl
    else:
        assert build == f"  build: CPU only: {b['note']}"
        assert b["note"].startswith(CPU_REASONS), b["note"]
        if b["note"] != "GPTCORE_CUDA=OFF":
            assert b["note"].endswith(", then reinstall)")  # and how to get the CUDA build
        assert not any(line.startswith("  cuda: ") for line in lines)
    assert "  cuda devices: " in "\n".join(lines)


def test_training_device_with_a_gpu_this_build_cannot_use(monkeypatch, capsys):
    """A visible GPU with a CPU-only build: "auto" trains on the CPU and says why; "cuda" is refused
    with the build's reason and the two ways out; PyTorch's ops may still take the GPU."""
    note = "cuBLAS not found at build time (pip install nvidia-cublas, then reinstall)"
    monkeypatch.setattr(gptcore, "_build_info", lambda: {**_C.build_info(), "cuda": False, "note": note})
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert resolve_device("auto").type == "cpu"
    assert f"this build has no CUDA kernels ({note}); training on the CPU" in capsys.readouterr().out
    refusal = (
        f"device 'cuda': this gptcore build has no CUDA kernels ({note}); use device=cpu, or use_gptcore_ops=false"
    )
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        resolve_device("cuda")
    assert resolve_device("auto", gptcore_ops=False).type == "cuda"
