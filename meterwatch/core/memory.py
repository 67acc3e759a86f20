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
from typing import Any

#: Arrow's choice of allocator, read when Arrow first allocates.
ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
#: glibc's mallopt parameters: the most arenas malloc creates; the free memory at the top of
#: the heap above which ``free`` gives it back; what the heap grows by beyond a request; the
#: most blocks served by a memory map of their own.
_M_ARENA_MAX = -8
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
#: Heap growth beyond a request while arrays are reused (bytes): fewer, larger extensions.
ARRAY_HEAP_PAD = 64 << 20
#: Whether :func:`reuse_freed_memory` took effect in this process.
_reusing = False


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
        mallopt = _mallopt()
        if mallopt is not None:
            mallopt(_M_ARENA_MAX, 1)


def _mallopt() -> Any:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return None


def reuse_freed_memory() -> None:
    """For a process that analyses one large fleet in its own memory (``meterwatch analyze``:
    whole-array rules over its window allocate and free arrays of tens of MB each, hundreds
    of times): glibc keeps what is freed for the next arrays instead of giving it back to the
    system at once (large blocks from the heap, not from a memory map of their own, and no
    automatic trim of the heap's top), and numpy's arrays go without transparent huge pages
    (:func:`_numpy_huge_pages`). Memory given back is faulted and zeroed again by the kernel
    when next used: on the measuring machine that zeroing was 16-19 % of ``meterwatch
    analyze``'s CPU time. Freed memory is still given back after a file read
    (:func:`release_arrow_pool`), which bounds the peak, but not between a partition's stages
    (:func:`release_partition_memory`): ``analyze``'s peak stayed within 6 % of where it was.
    Not for the workers of a daily run (many partitions a process, each a fraction of the
    size): there the heap kept between those points raised a worker's peak from 2.9x to 3.2x
    its input, for no measurable gain. Not when the environment tunes malloc itself
    (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``); idempotent."""
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ) or (
        "malloc" in os.environ.get("GLIBC_TUNABLES", "")
    ):
        return
    mallopt = _mallopt()
    if mallopt is None:
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)  # an int: the most it takes
    mallopt(_M_TOP_PAD, ARRAY_HEAP_PAD)
    global _reusing
    _reusing = True
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        _numpy_huge_pages(False)


def _numpy_huge_pages(enabled: bool) -> None:
    """Whether numpy asks the kernel for transparent huge pages for its large arrays (its
    default on Linux; ``NUMPY_MADVISE_HUGEPAGE`` at import sets the same). Off where arrays
    reuse the heap: ``analyze`` of 1,000 meters x 60 days took 6.0-7.8 s (median 6.3) without
    them against 6.9-8.2 s (median 7.0) with them, its system time 1.5-1.9 s against 1.7-3.4
    (the kernel zeroing and compacting 2 MB pages), four alternating runs each."""
    import numpy as np

    setter = getattr(getattr(np, "_core", None), "multiarray", None)
    setter = getattr(setter, "_set_madvise_hugepage", None)
    if setter is not None:  # private to numpy: without it, numpy's default stays
        setter(enabled)


def release_partition_memory() -> None:
    """Between the stages of a partition run (each column a window build takes from the
    readings, the window built, the partition done): freed memory back to the system
    (:func:`release_arrow_pool`), except in a process that keeps it for reuse
    (:func:`reuse_freed_memory`): there the next arrays take it. Measured on ``analyze`` of
    1,000 meters x 60 days: 5.5-5.9 s without the releases after the window and the
    partition, 6.4-7.0 s with them (the kernel zeroing the pages again), peak 1.57-1.64 GB
    against 1.55."""
    if not _reusing:
        release_arrow_pool()


def release_arrow_pool() -> None:
    """Give freed memory back to the system (on the shared C heap: glibc's ``malloc_trim``,
    which Arrow's system pool runs), at the points named above. Without it the worker peaked
    at 690-760 MiB, not 550-600 (the holes the read buffers left were not where the window's
    arrays went)."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()
