"""`gptcore info` says which build this is and why: a CPU build names what was missing, a CUDA build
its architectures and NCCL (or what it lacks)."""

import re

from gptcore import _C, cli

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
