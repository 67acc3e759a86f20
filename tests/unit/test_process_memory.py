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


def _run(setup: str, env: dict[str, str], probe: str = _PROBE) -> str:
    """``probe`` in a process of its own, without the environment's malloc tunables (CI
    sets some) unless ``env`` gives them."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    clean.pop("NUMPY_MADVISE_HUGEPAGE", None)
    out = subprocess.run(
        [sys.executable, "-c", probe.format(setup=setup)],
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


_WINDOW_PROBE = """
import pandas as pd
import meterwatch.core.memory as m
from meterwatch.analytics.window import build_window
released = []
m.release_arrow_pool = lambda: released.append(1)
{setup}
readings = pd.DataFrame({{
    "meter_id": ["A", "B"] * 4,
    "ts": pd.date_range("2026-01-05", periods=8, freq="15min", tz="UTC").repeat(1),
    "energy_import_kwh": [1.0] * 8, "power_kw": [0.5] * 8, "voltage_l1_v": [230.0] * 8,
}})
build_window(readings, pd.DataFrame({{"meter_id": ["A", "B"]}}), consume=True)
print(len(released))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_a_consuming_window_build_releases_each_column_it_takes() -> None:
    """A worker's window build gives each readings column back as it takes it (its peak is
    then the window, not the window and the readings); where freed memory is kept for reuse,
    nothing is released."""
    assert int(_run("", {}, _WINDOW_PROBE)) >= 12  # every quantity (absent ones too)
    assert _run("m.reuse_freed_memory()", {}, _WINDOW_PROBE) == "0"
