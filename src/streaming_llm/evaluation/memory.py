"""Peak memory of a run: process RSS high-water mark (reset per run where Linux allows) and CUDA peak."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> bool:
    """Reset the peak counters; returns whether the RSS peak could be reset (Linux only).

    Writing "5" to /proc/self/clear_refs resets VmHWM (Linux >= 4.0), so several runs in one
    process each get their own peak instead of inheriting the largest so far.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in bytes; ``None`` off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process, in bytes."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def current_rss_bytes() -> int:
    """Resident set size of this process now, in bytes (off Linux: the peak, the closest figure
    the platform gives)."""
    now = _status_bytes("VmRSS")
    return now if now is not None else peak_rss_bytes()


def peak_device_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None
