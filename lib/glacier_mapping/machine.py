"""What CPU a run measured its times on: model, cores and the instruction sets that matter.

Machines of the same kind differ by up to 2x in TensorFlow's speed depending on AVX-512 (and
its bfloat16 extension, and AMX); every stated time carries this description.
``ONEDNN_MAX_CPU_ISA=AVX2`` makes TensorFlow's oneDNN kernels behave as on an AVX2-only CPU, so a
run under it is described as such.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

#: Flags reported in the description, in this order.
REPORTED_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """CPU model name and feature flags from Linux ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU", frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = frozenset(line.split(":", 1)[1].split())
    return model or platform.processor() or "unknown CPU", flags


def cpu_flags() -> frozenset[str]:
    """Feature flags of the CPU (empty where they cannot be read)."""
    return _cpuinfo()[1]


def instruction_set_kind() -> str:
    """``AVX-512`` or ``AVX2-only``: the kind TensorFlow's kernels run as on this machine."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if limit.startswith("AVX2") or limit in ("SSE41", "AVX"):
        return "AVX2-only (ONEDNN_MAX_CPU_ISA=" + limit + ")"
    return "AVX-512" if "avx512f" in cpu_flags() else "AVX2-only"


def cpu_description() -> dict[str, object]:
    """Model, core count, reported flags and instruction-set kind of this machine's CPU."""
    model, flags = _cpuinfo()
    return {"model": model, "cores": os.cpu_count(),
            "flags": [flag for flag in REPORTED_FLAGS if flag in flags],
            "kind": instruction_set_kind(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "")}


def cpu_summary(description: dict[str, object] | None = None) -> str:
    """One line, e.g. ``Intel Xeon (2 cores, AVX-512; avx2 avx512f)``."""
    cpu = description or cpu_description()
    flags = " ".join(cpu.get("flags", [])) or "no AVX flags read"
    return f"{cpu['model']} ({cpu['cores']} cores, {cpu['kind']}; {flags})"
