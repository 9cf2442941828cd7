"""What a benchmark ran on: CPU, cores, Python and library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: the instruction sets that set the encoder's and the index's speed (ONNX Runtime's GEMM kernels and
#: Faiss pick their code by these), and int8's: without VNNI its u8 x s8 products go through AVX2's
#: slower multiply-add; the same VM type has come with and without them
SPEED_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def _cpu_features() -> list[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in SPEED_FEATURES if f in flags]
    except OSError:
        pass
    return []


def machine_info() -> dict[str, object]:
    """Machine facts and versions recorded in every benchmark result."""
    versions = {}
    for dist in ("routeworker", "numpy", "faiss-cpu", "fastembed", "onnxruntime", "aiokafka", "redis"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": _cpu_model(),
        "cpu_features": _cpu_features(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
