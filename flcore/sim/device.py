"""Where and in what precision a run computes: device and precision resolution, CPU facts.

`auto` picks CUDA when PyTorch sees a GPU, and bf16 autocast only where the hardware runs
it fast (see `resolve_precision`). Both are part of a run's store key: they change rounding.
"""

from __future__ import annotations

import torch


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_id() -> str:
    """The CPU's name with its family, model and stepping (/proc/cpuinfo): one name such as
    "AMD EPYC" covers CPU generations of very different speed."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        pass
    parts = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    return cpu_name() + (f" ({', '.join(parts)})" if parts else "")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is visible to PyTorch; use device='cpu' or 'auto'")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """`auto` picks bf16 autocast only where the hardware runs it fast.

    CUDA: GPUs with native bf16. CPU: AMX (Sapphire Rapids and later) or AVX512-BF16 (e.g. AMD
    Zen 4); on AVX2-only CPUs bf16 is emulated and several times slower than fp32. PyTorch kernels
    limited to AVX2 (`ATEN_CPU_CAPABILITY=avx2`, as `benchmarks/avx2_emulation.sh` sets to mimic
    the AVX2-only machine kind) count as AVX2-only.
    """
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2", "NO AVX"):
        return "fp32"
    return "bf16" if {"amx_bf16", "avx512_bf16"} & cpu_flags() else "fp32"


def dtype_of(precision: str) -> torch.dtype:
    """Storage and compute dtype of parameters and activations (bf16 runs under autocast)."""
    return torch.float64 if precision == "fp64" else torch.float32


def to_dtype(state: dict[str, torch.Tensor], dtype: torch.dtype, device: str) -> dict:
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in state.items()}


def autocast(device: str, precision: str):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")

