"""Plug-ins register themselves: a new detector, source or sink reaches the config and the
service's wiring without touching either (the registries of analytics, collector, alerts)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pandas as pd
import pytest

from meterwatch.alerts.delivery import build_sinks
from meterwatch.alerts.delivery import registry as sinks
from meterwatch.analytics import registry as detectors
from meterwatch.analytics.base import Detector
from meterwatch.collector import sources
from meterwatch.core.catalogue import CATALOGUE
from meterwatch.core.config import Section
from meterwatch.core.schema import empty_findings


@pytest.fixture
def restore() -> Iterator[None]:
    saved = (dict(detectors._REGISTRY), dict(sources._SOURCES), dict(sinks._SINKS))
    yield
    for reg, old in zip((detectors._REGISTRY, sources._SOURCES, sinks._SINKS), saved, strict=True):
        reg.clear()
        reg.update(old)


def test_every_detector_declares_cadence_history_and_catalogue_types() -> None:
    specs = detectors.load_detectors()
    assert {t for s in specs.values() for t in s.alert_types} <= set(CATALOGUE)
    assert {s.cadence for s in specs.values()} == {"streaming", "interval", "daily"}
    assert specs["consumption_spike"].history_s == 28 * 86400
    assert {k for k, s in specs.items() if s.cadence == "daily"} == {
        "theft_suspected",
        "transformer_loss",
    }


def test_a_new_detector_reaches_the_suite_and_the_config(restore: None) -> None:
    @detectors.register(cadence="daily", history_days=3, order=999)
    class GhostLoad(Detector):
        alert_types: ClassVar[tuple[str, ...]] = ("zero_consumption",)

        def __init__(self, floor_kwh: float = 0.1) -> None:
            if floor_kwh < 0:
                raise ValueError("floor_kwh must be >= 0")
            self.floor_kwh = floor_kwh

        def detect(self, readings: pd.DataFrame, meters: pd.DataFrame) -> pd.DataFrame:
            return empty_findings()

    built = detectors.build_detectors({"ghost_load": {"floor_kwh": 0.5}}, ("daily",))
    assert isinstance(built[-1], GhostLoad) and built[-1].floor_kwh == 0.5
    from meterwatch.analytics.config import _compose_detectors

    model = _compose_detectors()
    assert model.model_validate({"ghost_load": {"floor_kwh": 1}}).ghost_load.floor_kwh == 1.0
    with pytest.raises(ValueError, match="floor_kwh must be >= 0"):
        model.model_validate({"ghost_load": {"floor_kwh": -1}})


def test_a_detector_must_emit_catalogue_types(restore: None) -> None:
    with pytest.raises(ValueError, match="not in the catalogue"):

        @detectors.register(cadence="interval")
        class Bogus(Detector):
            alert_types: ClassVar[tuple[str, ...]] = ("no_such_type",)


class EchoConfig(Section):
    enabled: bool = True
    name: str = "echo"


class EchoSource:
    protocol = "echo"

    def __init__(self, name: str):
        self.name = name
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False


def test_a_new_source_reaches_the_collector_config_and_the_wiring(restore: None) -> None:
    sources.register_source(
        sources.SourceSpec("echo", EchoConfig, lambda cfg, ctx: [EchoSource(cfg.name)])
    )
    from meterwatch.collector.config import _compose

    model = _compose()
    cfg = model.model_validate(
        {
            "echo": {"name": "e1"},
            "modbus": {"enabled": False},
            "dlt645": {"enabled": False},
            "mqtt": {"enabled": False},
        }
    )
    ctx: Any = sources.SourceContext(clock=None, writer=None, stats=None, on_findings=print)  # type: ignore[arg-type]
    built = sources.build_sources(cfg, ctx)
    assert [s.name for s in built] == ["e1"] and isinstance(built[0], sources.ServiceSource)
    assert not isinstance(built[0], sources.PolledSource)


def test_a_new_sink_reaches_the_delivery_config_and_the_dispatcher(restore: None) -> None:
    class PagerConfig(Section):
        url: str | None = None

    class PagerSink:
        name = "pager"
        events = frozenset({"opened"})

        def send(self, note: Any) -> None: ...

    sinks.register_sink(
        sinks.SinkSpec(
            "pager", PagerConfig, PagerConfig(), lambda c, ctx: [PagerSink()] if c.url else []
        )
    )
    from meterwatch.alerts.config import _compose_delivery

    cfg = _compose_delivery().model_validate({"pager": {"url": "http://127.0.0.1:1/"}})
    assert [s.name for s in build_sinks(cfg)] == ["pager"]
    assert build_sinks(_compose_delivery().model_validate({})) == []
