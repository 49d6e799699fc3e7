"""The machine under the bench: what it is (CPU model, cores, GPU, torch) and what it can do at best.

`measure_limits` times memory reads, copies and fp32/fp64 GEMM on the chosen device; the floors in
bench/run.py divide an adapter's bytes and factor-space flops by these rates. Timers synchronise CUDA before
they are read. Bench code, not library code: it may print.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on `device` (CUDA work is asynchronous; a timer read too early lies)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def wall_times(
    fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, device: torch.device | None = None
) -> list[float]:
    """Wall seconds of `repeats` runs of `fn()` after `warmup` runs, synchronising `device` around each."""
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median_time(
    fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, device: torch.device | None = None
) -> float:
    """Median wall seconds of `fn()` over `repeats` runs after `warmup` runs: what a figure reports."""
    return statistics.median(wall_times(fn, repeats=repeats, warmup=warmup, device=device))


def best_time(fn: Callable[[], object], *, repeats: int = 5, device: torch.device | None = None) -> float:
    """Least wall seconds of `fn()` over `repeats` runs after one warm-up: what the machine can do at best,
    which a floor needs (a median would lower the floor whenever neighbours slow the measurement down)."""
    return min(wall_times(fn, repeats=repeats, device=device))


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class MachineInfo:
    """What the figures were measured on."""

    cpu: str
    cores: int
    """Logical CPUs the process may use."""
    torch_threads: int
    torch_version: str
    memory_gib: float
    gpu: str | None
    """GPU name when the bench ran on CUDA, else None."""
    load_average: tuple[float, float, float]
    """1/5/15-minute load average when the run started (the machine is shared)."""

    def line(self) -> str:
        gpu = f", GPU {self.gpu}" if self.gpu else ""
        return (
            f"{self.cpu}, {self.cores} cores ({self.torch_threads} torch threads), {self.memory_gib:.0f} GiB{gpu}; "
            f"torch {self.torch_version}; load average at start {self.load_average[0]:.2f}"
        )


def machine_info(device: torch.device) -> MachineInfo:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return MachineInfo(
        cpu=cpu_model(),
        cores=len(os.sched_getaffinity(0)),
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        memory_gib=pages / 2**30,
        gpu=gpu,
        load_average=os.getloadavg(),
    )


@dataclass(frozen=True)
class Limits:
    """Best rates measured on the device: the denominators of every floor."""

    read_gb_s: float
    """Streaming read (sum over a 512 MiB fp32 tensor)."""
    copy_gb_s: float
    """Streaming copy, counted as bytes read + bytes written."""
    gemm_f32_gflop_s: float
    """fp32 matmul, 4096^3 (TF32 off: the engine's float32 path is true fp32)."""
    gemm_f64_gflop_s: float
    """fp64 matmul, 2048^3."""
    h2d_gb_s: float | None = None
    """CUDA only: host (pageable) to device copy, the rate at which host-resident factors reach the GPU."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def best(self, other: Limits) -> Limits:
        """The higher of each rate (limits measured at the start and the end of a run)."""
        h2d = [x for x in (self.h2d_gb_s, other.h2d_gb_s) if x is not None]
        return Limits(
            read_gb_s=max(self.read_gb_s, other.read_gb_s),
            copy_gb_s=max(self.copy_gb_s, other.copy_gb_s),
            gemm_f32_gflop_s=max(self.gemm_f32_gflop_s, other.gemm_f32_gflop_s),
            gemm_f64_gflop_s=max(self.gemm_f64_gflop_s, other.gemm_f64_gflop_s),
            h2d_gb_s=max(h2d) if h2d else None,
        )


def _stream_rates(device: torch.device, repeats: int) -> tuple[float, float]:
    """Seconds to read and to copy a 512 MiB fp32 tensor on `device`."""
    x = torch.ones(128 * 2**20, device=device)
    y = torch.empty_like(x)
    return best_time(lambda: x.sum(), repeats=repeats, device=device), best_time(
        lambda: y.copy_(x), repeats=repeats, device=device
    )


def _gemm_seconds(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    return best_time(lambda: a @ a, repeats=repeats, device=device)  # (n, n) @ (n, n)


def measure_limits(device: torch.device, *, repeats: int = 5) -> Limits:
    """Measure memory bandwidth and GEMM throughput on `device`, best of `repeats` (about 10 s on a 2-core CPU)."""
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        read, copy = _stream_rates(device, repeats)
        n32, n64 = 4096, 2048
        gemm32 = _gemm_seconds(n32, torch.float32, device, repeats)
        gemm64 = _gemm_seconds(n64, torch.float64, device, repeats)
        h2d = None
        if device.type == "cuda":
            host = torch.ones(128 * 2**20)
            h2d = best_time(lambda: host.to(device), repeats=repeats, device=device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    size = 128 * 2**20 * 4
    return Limits(
        read_gb_s=size / read / 1e9,
        copy_gb_s=2 * size / copy / 1e9,
        gemm_f32_gflop_s=2 * n32**3 / gemm32 / 1e9,
        gemm_f64_gflop_s=2 * n64**3 / gemm64 / 1e9,
        h2d_gb_s=size / h2d / 1e9 if h2d else None,
    )
