"""How many cores this process may use."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (a container's cpuset, ``taskset``),
    not the machine's count (``os.cpu_count()``), which a thread pool sized for the machine
    would oversubscribe."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
