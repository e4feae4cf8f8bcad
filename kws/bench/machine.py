"""The machine a bench runs on: CPU model, cores, memory, load, OS and library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from kws import __version__
from kws.bench.report import Machine

CPU_MODEL_KEYS = ("model name", "hardware", "cpu model")
"""Lines of /proc/cpuinfo naming the CPU (x86, ARM boards, MIPS), lower case."""


def load_average() -> tuple[float, ...] | None:
    """1, 5 and 15 min load average (None where the OS has none)."""
    return tuple(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info() -> Machine:
    """This machine, as the report states it (``load_average_end`` is set at the end of the run)."""
    import onnxruntime

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(CPU_MODEL_KEYS):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "kws": __version__,
    }
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return Machine(
        cpu=cpu,
        cores=os.cpu_count(),
        usable_cores=usable,
        memory_bytes=memory,
        platform=platform.platform(),
        machine=platform.machine(),
        load_average=load_average(),
        versions=versions,
    )
