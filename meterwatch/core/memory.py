"""Process memory: Arrow and numpy on one heap, and that heap in one arena.

A file read through Arrow becomes numpy arrays; the analytics then free those and allocate
their own. With Arrow's own allocator (mimalloc) the freed read buffers stay with it, out of
numpy's reach; with glibc's default of an arena per thread, the buffers Arrow's reading threads
allocated are freed into those threads' arenas, again out of reach of the main thread's arrays.
Either way a process that reads a partition, builds its window and runs its rules holds both.
Measured on a 20,000-meter day (194 MiB in memory, ``bench/analytics_daily.py``, one worker,
six partitions, before the window's other memory savings): peak 855 MiB with mimalloc,
610-650 MiB on the C heap with arenas per thread, 550-600 MiB on the C heap in one arena.

Freed memory is given back to the system (:func:`release_arrow_pool`: glibc's ``malloc_trim``)
after a file is read, once a window holds its readings and after each partition: each
partition then starts from the same heap, not from the previous one's holes (one worker over
eight partitions peaked at 502-541 MiB a partition with it, 531-587 without). The pages are
faulted in again by the next arrays (about 2 us a page on the measuring machine).
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Arrow's choice of allocator, read when Arrow first allocates.
ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
#: glibc's mallopt parameter: the most arenas malloc creates.
_M_ARENA_MAX = -8


def one_heap() -> None:
    """Arrow allocates from the C library's heap, as numpy does, and (glibc) every thread
    from one arena; unless the environment chose otherwise (``ARROW_DEFAULT_MEMORY_POOL``,
    ``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES``). Run when ``meterwatch`` is imported, before
    Arrow's first allocation and threads; if pyarrow is loaded already, its default pool is
    switched (``pyarrow.set_memory_pool``; its Parquet and CSV readers follow it)."""
    os.environ.setdefault(ARROW_POOL_VARIABLE, "system")
    if os.environ[ARROW_POOL_VARIABLE] != "system":
        return
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.set_memory_pool(pa.system_memory_pool())
    if (
        sys.platform == "linux"
        and "MALLOC_ARENA_MAX" not in os.environ
        and "arena" not in os.environ.get("GLIBC_TUNABLES", "")
    ):
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc
            return
        mallopt(_M_ARENA_MAX, 1)


def release_arrow_pool() -> None:
    """Give freed memory back to the system (on the shared C heap: glibc's ``malloc_trim``,
    which Arrow's system pool runs), at the points named above. Without it the worker peaked
    at 690-760 MiB, not 550-600 (the holes the read buffers left were not where the window's
    arrays went)."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()
