"""What every benchmark shares: interleaved timing, paired ratios, the machine's description,
its measured matmul peak and Markdown tables.

Colleagues' jobs share this machine, so no number is taken alone: a candidate and its baseline
run in turns (a, b, a, b, ...) so that load hits both alike, each result is a median over
repetitions, and speed is reported as a ratio to a baseline measured in the same run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

CPU = torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device: torch.device = CPU) -> dict[str, list[float]]:
    """Seconds per call of each candidate, `repeats` times each, called in turns after
    `warmup` untimed calls each. Every other round runs in reverse order (a, b, c, c, b, a, ...),
    so that no candidate always follows the same one (caches, frequency, a colleague's job)."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in candidates}
    order = list(candidates.items())
    for _ in range(repeats):
        for name, fn in order:
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
        order.reverse()
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def speedup(times: dict[str, list[float]], candidate: str, baseline: str) -> float:
    """How many times faster `candidate` is than `baseline`: the median over repetitions of
    baseline time / candidate time, each pair measured side by side."""
    return statistics.median(b / c for b, c in zip(times[baseline], times[candidate],
                                                   strict=True))


def timed(fn: Callable[[], object], device: torch.device = CPU) -> float:
    """Seconds of one call."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048,
                repeats: int = 5) -> float:
    """Measured FLOP/s of a large square matmul: the ceiling that MFU is quoted against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = min(timed(lambda: a @ b, device) for _ in range(repeats + 1))
    return 2 * n**3 / best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming the hardware, the software and the threads used."""
    parts = [f"CPU {cpu_name()}, {os.cpu_count()} cores",
             f"torch {torch.__version__}", f"{torch.get_num_threads()} torch thread(s)"]
    if torch.cuda.is_available():
        parts.insert(1, f"GPU {torch.cuda.get_device_name()}")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average at start {os.getloadavg()[0]:.1f}")
    return ", ".join(parts)


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats get 3 significant digits, or thousands separators when large."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
