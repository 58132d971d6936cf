"""What a measurement ran on: CPU, cores, torch threads, device and library versions (bench and frontier report it)."""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib.metadata import version
from pathlib import Path

import torch


def describe(torch_threads: int) -> dict:
    """CPU model, cores, the instruction set torch's CPU kernels use (``cpu_capability``, e.g. AVX2 or AVX512: float
    results can differ between two, so a run is bit-reproducible only where it is the same), torch threads, device
    and the versions of Python and the libraries that set the speed."""
    cpuinfo = Path("/proc/cpuinfo")
    cpu_names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")] if cpuinfo.exists() else []  # fmt: skip
    libraries = [name for name in ("torch", "transformers", "accelerate", "trl") if importlib.util.find_spec(name)]
    return {
        "cpu": cpu_names[0] if cpu_names else platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch_threads,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {"python": platform.python_version(), **{name: version(name) for name in libraries}},
    }
