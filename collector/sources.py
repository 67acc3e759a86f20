"""The source registry: each way of getting readings (Modbus, DL/T 645, MQTT …) registers itself.

Modelled on Telegraf's ``inputs.Add(name, creator)`` and its ``Input``/``ServiceInput`` split:

* a **polled** source (:class:`PolledSource`) is asked for one poll cycle at its interval by the
  service's scheduler (Modbus and DL/T 645 gateways);
* a **service** source (:class:`ServiceSource`) runs on its own between ``start`` and ``stop``
  (the MQTT subscription).

A source module calls :func:`register_source` with its config model (the ``collector.<name>``
section) and a ``build`` function; every module of this package is imported by
:func:`load_sources`, so adding a source touches its own module (and its docs), not the
service, the config composition or the wiring.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from meterwatch.core.clock import Clock
from meterwatch.core.config import Section
from meterwatch.core.stats import Stats

if TYPE_CHECKING:
    import pandas as pd

    from meterwatch.collector.writer import ReadingWriter


@dataclass(frozen=True)
class SimulatedEndpoint:
    """Where the demo's simulated meters of one protocol listen, and what they are.

    ``devices`` are protocol-specific descriptions (for Modbus: (meter_id, unit, RegisterMap)).
    """

    host: str
    port: int
    devices: Sequence[Any] = ()


@dataclass
class SourceContext:
    """What every source gets from the service when it is built."""

    clock: Clock
    writer: ReadingWriter
    stats: Stats
    #: Called with findings a source makes itself (``meter_offline`` and its recovery).
    on_findings: Callable[[pd.DataFrame], Any]
    #: User register maps (``collector.maps``).
    maps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Simulated meters by source name (``devices: simulator`` in the demo).
    simulated: Mapping[str, SimulatedEndpoint] = field(default_factory=dict)
    #: Hand readings to the writer as ColumnBatch, encoded ahead (the lean ingest process).
    columnar: bool = False


@runtime_checkable
class PolledSource(Protocol):
    """A gateway or bus polled once per interval (Telegraf's ``Input``)."""

    name: str
    protocol: str
    #: Poll interval [service s]; None: the source section's default.
    interval_s: float | None
    #: Set by the service when it stops: a cycle in progress ends early (reads kept).
    stopping: bool

    def meter_ids(self) -> list[str]: ...

    async def poll_cycle(self, wall_interval: float) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class ServiceSource(Protocol):
    """A source that runs by itself between start and stop (Telegraf's ``ServiceInput``)."""

    name: str
    protocol: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


Source = PolledSource | ServiceSource


@dataclass(frozen=True)
class SourceSpec:
    """One registered source: its ``collector.<name>`` section model and how to build it."""

    name: str
    config: type[Section]
    #: ``build(section, context)``: the sources this section configures (empty when disabled).
    build: Callable[[Any, SourceContext], list[Source]]
    #: One line for the docs and ``config check``.
    doc: str = ""


_SOURCES: dict[str, SourceSpec] = {}
_loaded = False


def register_source(spec: SourceSpec) -> SourceSpec:
    """Add a source to the registry (at import of its module)."""
    if spec.name in _SOURCES and _SOURCES[spec.name] is not spec:
        raise ValueError(f"source {spec.name!r} registered twice")
    if spec.name == "maps":
        raise ValueError("'maps' is reserved (collector.maps: user register maps)")
    _SOURCES[spec.name] = spec
    return spec


def load_sources() -> dict[str, SourceSpec]:
    """Import every module of the collector package once; the registered sources by name."""
    global _loaded
    if not _loaded:
        import meterwatch.collector as pkg

        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
        _loaded = True
    return dict(_SOURCES)


def build_sources(collector_cfg: Any, ctx: SourceContext) -> list[Source]:
    """Every source the ``collector`` section enables, in registry order."""
    out: list[Source] = []
    for name, spec in load_sources().items():
        section = getattr(collector_cfg, name)
        if getattr(section, "enabled", True):
            out.extend(spec.build(section, ctx))
    return out
