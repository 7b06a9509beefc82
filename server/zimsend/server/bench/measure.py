"""Small measuring tools shared by the load generator and the scenarios.

Why /proc and not psutil: the bench must run on a fresh machine with the server's own
dependencies only, and Linux's /proc gives the two numbers we need (CPU seconds and RSS of a
process) in one read each. Elsewhere they are reported as None.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ProcessSample", "percentile", "rss_bytes", "sample", "summarize_ms"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def summarize_ms(latencies_s: list[float]) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds, rounded for the table."""
    values = sorted(latencies_s)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {
        "p50_ms": ms(percentile(values, 50)),
        "p90_ms": ms(percentile(values, 90)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(values[-1] if values else None),
    }


@dataclass(frozen=True)
class ProcessSample:
    """CPU seconds (user + system, children excluded) of a process at a wall-clock time."""

    pid: int
    at: float
    cpu_s: float | None

    def share_until(self, later: ProcessSample) -> float | None:
        """Fraction of one core this process used between two samples (1.0 = a full core)."""
        if self.cpu_s is None or later.cpu_s is None or later.at <= self.at:
            return None
        return round((later.cpu_s - self.cpu_s) / (later.at - self.at), 3)


def sample(pid: int) -> ProcessSample:
    return ProcessSample(pid, time.monotonic(), _cpu_seconds(pid))


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # Fields after the command name: state is [0]; utime [11], stime [12] (man proc).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process, from /proc/PID/statm."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None
