"""Where and in what arithmetic a stage runs: device, precision (bf16 autocast or fp32), threads, determinism.

A stage decides these once (:func:`setup`) and passes the :class:`Runtime` down; every forward pass goes through
:meth:`Runtime.autocast` and :func:`to_input`. Only the backbone's convolutions and matrix products run in bf16;
losses, distances and features are float32 (and NC float64). Measured speeds: ``docs/performance.md``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
#: How a training step runs (:mod:`metacollapse.step`): eagerly, as a captured CUDA graph, or torch.compile'd.
COMPILE_MODES = ("auto", "none", "graph", "reduce-overhead")


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for a CUDA device this machine lacks is an error, not a CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RuntimeError(f"device={device!r} was requested but torch sees no CUDA device")
        index = torch.device(device).index
        if index is not None and index >= count:
            raise RuntimeError(f"device={device!r} was requested but this machine has {count} CUDA device(s)")
    return torch.device(device)


def resolve_compile(mode: str, device: torch.device) -> str:
    """``auto``: ``graph`` on CUDA, ``none`` elsewhere. ``graph`` needs CUDA."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode == "auto":
        return "graph" if device.type == "cuda" else "none"
    if mode == "graph" and device.type != "cuda":
        raise ValueError(f"compile 'graph' captures CUDA graphs and needs a CUDA device, got {device.type!r}")
    return mode


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def cpu_has_bf16_matmul() -> bool:
    """True on x86 CPUs with AMX bf16 tiles, where oneDNN's bf16 kernels are fast."""
    return "amx_bf16" in _cpu_flags()


def auto_precision(device: torch.device, arch: str | None = None) -> str:
    """What ``precision: auto`` runs ``arch`` in on ``device``: the faster one where it was measured, else fp32.

    CUDA: fp32 for Conv-4 (its steps are bound by kernel launches, and bf16's casts cost more than they save),
    bf16 for larger backbones. CPUs with AMX: bf16. CPUs with AVX512-BF16 but no AMX (AMD Zen 4): bf16 for
    Conv-4 only (ResNet-18 is unmeasured there). The measurements behind each entry: ``docs/performance.md``.
    """
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            return "fp32"
        return "fp32" if arch == "conv4" else "bf16"
    if cpu_has_bf16_matmul():
        return "bf16"
    if "avx512_bf16" in _cpu_flags() and arch == "conv4":
        return "bf16"
    return "fp32"


def resolve_precision(precision: str, device: torch.device, arch: str | None = None) -> str:
    """``fp32`` or ``bf16``: as asked, or for ``auto`` what :func:`auto_precision` picks for ``arch``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return auto_precision(device, arch) if precision == "auto" else precision


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
    """Have glibc's malloc keep freed memory for reuse instead of unmapping it; True if it does.

    A training step frees and reallocates gigabytes; by default glibc unmaps every block over 32 MiB, so each step
    page-faults its memory in again (``docs/performance.md``, "Freed memory"). With mmap off and the heap never
    trimmed, blocks are reused and the process keeps its peak footprint. Numbers are bitwise unchanged.
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


@dataclass(frozen=True)
class Runtime:
    """The device and the resolved precision one run's networks use in a stage."""

    device: torch.device
    precision: str  # "fp32" or "bf16", never "auto"
    compile: str = "none"  # how training steps run: "none", "graph" or "reduce-overhead", never "auto"
    deterministic: bool = False  # deterministic CUDA kernels (CPU runs are deterministic anyway)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def place(self, learner: torch.nn.Module) -> torch.nn.Module:
        """``learner`` on the device, in the layout and precision of this runtime (the one place that sets them)."""
        learner.precision = self.precision
        return prepare_model(learner, self.device, self.precision)

    def describe(self) -> str:
        """What of the runtime changes a run's numbers: the device type, the precision, how steps run, and
        deterministic kernels on CUDA."""
        parts = [self.device.type, self.precision]
        parts += [self.compile] if self.compile != "none" else []
        parts += ["deterministic"] if self.deterministic else []
        return "/".join(parts)


def setup(
    device: str = "auto",
    precision: str = "auto",
    *,
    arch: str | None = None,
    threads: int | None = None,
    deterministic: bool = False,
    compile: str = "auto",
) -> Runtime:
    """Configure this process (:func:`configure`) and decide where and how ``arch`` runs, once per stage."""
    configure(threads, deterministic)
    dev = resolve_device(device)
    exact = deterministic and dev.type == "cuda"
    return Runtime(dev, resolve_precision(precision, dev, arch), resolve_compile(compile, dev), exact)
