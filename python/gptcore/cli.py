"""The `gptcore` console script. Subcommands arrive with their features; `info` is the first."""

from __future__ import annotations

import argparse
import sys


def _version(code: int, digits: tuple[int, ...]) -> str:
    """13000 -> '13.0' for (1000, 10); 131000 -> '13.10.0' for (10000, 100, 1)."""
    parts = []
    for d in digits:
        parts.append(str(code // d))
        code %= d
    return ".".join(parts)


def info_text() -> str:
    from gptcore import _C

    b = _C.build_info()
    lines = [f"gptcore {b['version']}"]
    lines.append(f"  cpu kernels: float32, OpenMP {'on' if b['openmp'] else 'off'}")
    if b["cuda"]:
        lines.append(f"  cuda: on (runtime {_version(b['cuda_runtime_version'], (1000, 10))}, archs {b['cuda_archs']})")
        lines.append(
            f"  cublas: {_version(b['cublas_version'], (10000, 100, 1)) if b['cublas_version'] else 'not linked'}"
        )
        lines.append(f"  nccl: {_version(b['nccl_version'], (10000, 100, 1)) if b['nccl_version'] else 'not linked'}")
    else:
        lines.append("  cuda: off (built without nvcc)")
    count = _C.cuda_device_count()
    lines.append(f"  cuda devices: {count}")
    for i in range(count):
        p = _C.cuda_device_properties(i)
        major, minor = p["capability"]
        gib = p["total_memory"] / 2**30
        lines.append(f"    [{i}] {p['name']}, sm_{major}{minor}, {p['multiprocessors']} SMs, {gib:.1f} GiB")
    try:
        import torch

        lines.append(f"  torch: {torch.__version__} (cuda {torch.version.cuda or 'none'})")
    except ImportError:
        lines.append("  torch: not installed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptcore", description="GPT-2 / GPT-3 training on a fused C++/CUDA core")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, build flags (CUDA, architectures, cuBLAS, NCCL) and visible devices")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
