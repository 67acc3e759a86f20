"""Shared fixtures and test groups.

Tests are grouped by folder, and each folder's tests carry its marker:

- ``tests/unit``: no external server (in-process simulators at most); ``pytest -m "not
  integration and not e2e"`` runs these.
- ``tests/integration`` (marker ``integration``): real servers from Debian packages (Mosquitto,
  InfluxDB, Alertmanager, VictoriaMetrics, Chromium, an SMTP server), started on free loopback
  ports by ``tests.support.servers`` and stopped after.
- ``tests/e2e`` (marker ``e2e``): the service run end to end (in process or as ``meterwatch run``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.support.partitions import several_areas_fleet
from tests.support.servers import Mosquitto, mosquitto

_GROUPS = {"integration": pytest.mark.integration, "e2e": pytest.mark.e2e}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = Path(str(item.fspath)).parent.name
        if group in _GROUPS:
            item.add_marker(_GROUPS[group])


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    with mosquitto(workdir) as broker:
        yield broker


@pytest.fixture(scope="session")
def several_areas() -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Readings, registry and the meters without an area of a simulated fleet of three areas
    with every alert type (tests.support.partitions)."""
    return several_areas_fleet()
