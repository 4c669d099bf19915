"""Where and in what precision the networks run: device choice, bf16 autocast, threads, memory, determinism.

Training, validation, evaluation and feature embedding all go through :func:`autocast` and :func:`to_input`, so
one switch (``precision``) decides the arithmetic of every forward pass. Only the backbone's convolutions and
matrix products run in bf16; losses, distances and everything the NC metrics see are cast back to float32 by the
caller (and NC itself is float64).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without one is an error, not a silent CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


@functools.cache
def cpu_has_bf16_matmul() -> bool:
    """True on x86 CPUs with AMX bf16 tiles (``amx_bf16`` in /proc/cpuinfo), where oneDNN's bf16 kernels are fast.

    AVX-512 bf16 alone converts quickly but multiplies no faster than fp32, so it does not count.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA GPUs that support it and on CPUs with bf16 matrix units, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16_matmul() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass when ``precision`` (already resolved) is ``bf16``; a no-op otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(precision: str) -> torch.memory_format:
    """Channels-last is what oneDNN's and cuDNN's bf16 convolutions want; fp32 keeps the default layout."""
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def prepare_model(
    model: torch.nn.Module, device: torch.device, precision: str, matmul_convolutions: bool = True
) -> torch.nn.Module:
    """Move ``model`` to ``device`` in the layout ``precision`` runs fastest in (weights stay float32).

    In bf16 on CPUs with AMX, plain convolutions also switch to :mod:`metacollapse.matmul_conv` where oneDNN's bf16
    kernels are slow (``matmul_convolutions=False`` keeps oneDNN everywhere, for comparison).
    """
    model = model.to(device=device, memory_format=memory_format(precision))
    if matmul_convolutions and precision == "bf16" and device.type == "cpu" and cpu_has_bf16_matmul():
        from metacollapse.matmul_conv import use_matmul_convolutions

        use_matmul_convolutions(model)
    return model


def to_input(images: torch.Tensor, precision: str) -> torch.Tensor:
    """Images ``[n, 1, H, W]`` in the layout of :func:`prepare_model`."""
    return images.contiguous(memory_format=memory_format(precision))


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel; True if it does.

    A training step allocates and frees gigabytes: ResNet-18 on 600 28x28 images touches 1.8 GB of fresh pages
    per step in bf16 and 9 GB in fp32 (activations, im2col columns, oneDNN's reorders). glibc serves every block
    over 32 MiB with its own mmap and unmaps it when freed, so each step faults all of it in again: 1-3 s of kernel
    time per ResNet-18 step on 2 cores, in both precisions. With mmap off (``M_MMAP_MAX`` 0) and the heap never
    trimmed (``M_TRIM_THRESHOLD``), blocks come from the heap and, once a step's pattern settles (2-3 steps), are
    reused; the process keeps its peak footprint, as CUDA's caching allocator does. Numbers are bitwise unchanged.
    ``bench/bench_allocator.py`` measures the effect. No-op off Linux glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own libc
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def configure(threads: int | None = None, deterministic: bool = False) -> None:
    """Pin torch's CPU threads, keep freed memory (:func:`keep_freed_memory`) and choose between CUDA autotuning
    and bitwise-repeatable CUDA kernels.

    On CPU, results are bitwise repeatable for a fixed thread count in either precision. On CUDA they are only
    with ``deterministic=True``: deterministic algorithms, no cuDNN autotuning, and the cuBLAS workspace setting
    that deterministic mode requires.
    """
    keep_freed_memory()
    if threads:
        torch.set_num_threads(int(threads))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
