"""meterwatch.core.memory: a process that analyses one fleet keeps freed memory for reuse
and numpy's arrays without transparent huge pages (unless the environment tunes malloc or
numpy's huge pages itself), and then skips the releases between a
partition's stages; others release there. Each case runs in a process of its own (malloc
settings last for the process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = """
import meterwatch.core.memory as m
released = []
m.release_arrow_pool = lambda: released.append(1)
{setup}
m.release_partition_memory()
from numpy._core import multiarray
huge = multiarray._set_madvise_hugepage(True)  # returns the setting it replaces
print(m._reusing, len(released), huge)
"""


def _run(setup: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    clean.pop("NUMPY_MADVISE_HUGEPAGE", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(setup=setup)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_reuse_skips_the_releases_between_partition_stages() -> None:
    assert _run("", {}) == "False 1 True"  # a daily-run worker: released; numpy's default
    # analyze: kept for the next arrays, without transparent huge pages for numpy's arrays
    assert _run("m.reuse_freed_memory()", {}) == "True 0 False"
    assert _run("m.reuse_freed_memory()", {"NUMPY_MADVISE_HUGEPAGE": "1"}) == "True 0 True"


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_an_environment_that_tunes_malloc_is_left_alone() -> None:
    assert _run("m.reuse_freed_memory()", {"MALLOC_TRIM_THRESHOLD_": "1000000"}) == "False 1 True"
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}
    assert _run("m.reuse_freed_memory()", tunables) == "False 1 True"
