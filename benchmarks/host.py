"""What the benchmarks report about the machine they ran on."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The instruction sets that decide a CPU's float32 and bfloat16 speed (``avx512_bf16``,
``amx_bf16``: units that compute in bfloat16; without them oneDNN emulates it)."""


def isa() -> list[str]:
    """Those of ``ISA_FLAGS`` this CPU reports (from /proc/cpuinfo on Linux; else none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return [f for f in ISA_FLAGS if f in flags]
