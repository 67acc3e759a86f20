"""Building blocks of every package's config section: the base model, durations, time zones, secrets.

Each package owns the model of its own section (``collector/config.py``, ``storage/config.py``,
``analytics/config.py``, ``alerts/config.py``, ``simulators/config.py``); ``meterwatch/config.py``
composes them into the file's top level. Defaults are written once, in those models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from meterwatch.core.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like ``90``, ``15m``, ``6h``, ``2d``, ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 900, '15m', '6h' or '2d'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            return float(text)
        except ValueError:
            pass
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNITS[u] for n, u in parts)
    raise ValueError(f"{value!r} is not a duration; use seconds or e.g. '15m', '6h', '2d'")


#: A duration field: seconds, or text with units (``15m``, ``6h``, ``2d``, ``1h30m``).
Duration = Annotated[float, BeforeValidator(parse_duration)]


def _iana_zone(value: str | None) -> str | None:
    """An IANA time zone name (checked with zoneinfo), or None."""
    if value is None:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not an IANA time zone (e.g. Asia/Shanghai, Europe/Berlin, UTC)"
        ) from None
    return value


#: An IANA time zone name, checked when the config is loaded.
TimeZone = Annotated[str, AfterValidator(_iana_zone)]
OptionalTimeZone = Annotated[str | None, AfterValidator(_iana_zone)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are frozen once parsed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def secret(
    var: str | None,
    setting: str,
    *,
    optional: bool = False,
    env: Mapping[str, str] | None = None,
) -> str | None:
    """The secret held by the environment variable ``var`` that config ``setting`` names.

    Secrets never live in a config file: settings ending in ``_env`` name the variable. No
    variable configured: None. A configured variable that is unset or empty is the one failure
    mode, a :class:`ConfigError` naming the setting and the variable, unless ``optional`` (the
    caller has a documented fallback, e.g. the audit key file), which gives None.
    """
    if not var:
        return None
    value = (os.environ if env is None else env).get(var)
    if value:
        return value
    if optional:
        return None
    raise ConfigError(
        setting.split(".")[0],
        [(setting, f"environment variable {var} is not set or empty (it holds the secret)")],
    )
