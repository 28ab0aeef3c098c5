"""`gptcore info`: version, build flags (CUDA, architectures, cuBLAS, NCCL) and visible devices."""

from __future__ import annotations

import torch

from gptcore import _C


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "info", help="version, build flags (CUDA, architectures, cuBLAS, NCCL) and visible devices"
    )
    parser.set_defaults(run=run)


def run(args) -> None:
    print(info_text())


def info_text() -> str:
    b = _C.build_info()
    lines = [f"gptcore {b['version']}"]
    # The build's note says why CUDA is off, or what a CUDA build lacks (set when CMake configured it).
    if b["cuda"]:
        nccl = f"NCCL {_version(b['nccl_version'], (10000, 100, 1))}" if b["nccl_version"] else b["note"]
        lines.append(f"  build: CUDA (archs {b['cuda_archs']}); {nccl}")
    else:
        lines.append(f"  build: CPU only: {b['note']}")
    lines.append(f"  cpu kernels: float32, OpenMP {'on' if b['openmp'] else 'off'}")
    if b["cuda"]:
        lines.append(f"  cuda: runtime {_version(b['cuda_runtime_version'], (1000, 10))}")
        lines.append(
            f"  cublas: {_version(b['cublas_version'], (10000, 100, 1)) if b['cublas_version'] else 'not linked'}"
        )
        lines.append(f"  nccl: {_version(b['nccl_version'], (10000, 100, 1)) if b['nccl_version'] else 'not linked'}")
    count = _C.cuda_device_count()
    lines.append(f"  cuda devices: {count}")
    for i in range(count):
        p = _C.cuda_device_properties(i)
        major, minor = p["capability"]
        gib = p["total_memory"] / 2**30
        lines.append(f"    [{i}] {p['name']}, sm_{major}{minor}, {p['multiprocessors']} SMs, {gib:.1f} GiB")
    lines.append(f"  torch: {torch.__version__} (cuda {torch.version.cuda or 'none'})")
    return "\n".join(lines)


def _version(code: int, digits: tuple[int, ...]) -> str:
    """13000 -> '13.0' for (1000, 10); 131000 -> '13.10.0' for (10000, 100, 1)."""
    parts = []
    for d in digits:
        parts.append(str(code // d))
        code %= d
    return ".".join(parts)
