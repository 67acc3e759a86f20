"""The alert-sink registry: each way of delivering alert changes registers itself.

A sink module calls :func:`register_sink` with its ``alerts.delivery.<name>`` config type,
its default and a ``build`` function; every module of this package is imported by
:func:`load_sinks`. The ``alerts.delivery`` config model and the dispatcher are composed from
the registry, so adding a sink touches its own module (and its docs) only.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class BrokerConnection:
    """The MQTT broker alert events go to (the collector's, ``collector.mqtt``)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class SinkContext:
    """What a sink gets from the service when it is built."""

    external_url: str = ""
    broker: BrokerConnection | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class SinkSpec:
    """One registered sink: config type and default of ``alerts.delivery.<name>``, and builder.

    ``build(section, context)`` returns the sinks the section enables (empty when off).
    """

    name: str
    config: Any
    default: Any
    build: Callable[[Any, SinkContext], list[Any]]


_SINKS: dict[str, SinkSpec] = {}
_loaded = False
RESERVED = frozenset({"state_dir", "external_url", "retry"})


def register_sink(spec: SinkSpec) -> SinkSpec:
    """Add a sink to the registry (at import of its module)."""
    if spec.name in RESERVED:
        raise ValueError(f"sink name {spec.name!r} is reserved (alerts.delivery.{spec.name})")
    if spec.name in _SINKS and _SINKS[spec.name] is not spec:
        raise ValueError(f"sink {spec.name!r} registered twice")
    _SINKS[spec.name] = spec
    return spec


def load_sinks() -> dict[str, SinkSpec]:
    """Import every module of the delivery package once; the registered sinks by name."""
    global _loaded
    if not _loaded:
        import meterwatch.alerts.delivery as pkg

        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
        _loaded = True
    return dict(_SINKS)
