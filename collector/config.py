"""``collector`` section: one sub-section per registered source, plus user register maps.

The model is composed from the source registry (:mod:`meterwatch.collector.sources`):
``collector.modbus``, ``collector.dlt645``, ``collector.mqtt`` and whatever source a module adds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import create_model

from meterwatch.collector.sources import load_sources
from meterwatch.core.config import Section


def _compose() -> type[Section]:
    fields: dict[str, Any] = {
        name: (spec.config, spec.config()) for name, spec in load_sources().items()
    }
    # User register maps: {model-id: {fields: {...}}}, same format as protocols/maps/*.yaml.
    fields["maps"] = (dict[str, dict[str, Any]], {})
    return create_model(  # type: ignore[call-overload,no-any-return]
        "CollectorConfig",
        __base__=Section,
        __doc__="``collector``: a section per registered source, plus ``maps``.",
        **fields,
    )


if TYPE_CHECKING:

    class CollectorConfig(Section):
        """Typed view for mypy: sections are looked up by registered source name."""

        maps: dict[str, dict[str, Any]] = {}

        def __getattr__(self, name: str) -> Any: ...

else:
    CollectorConfig = _compose()
