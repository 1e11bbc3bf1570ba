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


_MALLOC_SET = False


def keep_freed_memory() -> bool:
    """Let this process keep the memory it frees (glibc `mallopt`), once per process; returns
    whether it is set. The runner calls it before every training.

    Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536, so glibc hands freed
    memory back to the kernel as soon as 64 KiB are free. The engine allocates and frees
    megabyte-sized tensors at every step, and each one then comes back page fault by page
    fault: a paper-fmnist stack took 3.5 million page faults a round, and 1.98 times as long
    per round (`python benchmarks/page_faults.py`). Freed memory now stays with the process for
    its next allocations."""
    global _MALLOC_SET
    if not _MALLOC_SET:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            _MALLOC_SET = bool(libc.mallopt(m_trim_threshold, 2**31 - 1)) and bool(libc.mallopt(m_mmap_threshold, 2**25))
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to set
            pass
    return _MALLOC_SET


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

