"""The detector registry: each detector declares its name, alert types, cadence and history.

A detector module in ``analytics/detectors/`` decorates its classes with :func:`register`;
:func:`load_detectors` imports every module there. The service schedules detectors by
cadence and reads the history they declare; ``meterwatch config check`` validates
``analytics.detectors`` against this registry. Adding a detector touches its own module
(and README's detector table), nothing in the service or the config.

Cadences
--------
``streaming``
    Judged on every stored batch of readings (a fault is alerted within one poll), and in the
    interval runs.
``interval``
    Judged every ``analytics.interval`` over the recent window.
``daily``
    Day-scale analyses (theft ranking, area line loss), every ``analytics.daily_interval``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from meterwatch.analytics.base import Detector
from meterwatch.core.catalogue import CATALOGUE

Cadence = Literal["streaming", "interval", "daily"]
CADENCES: tuple[str, ...] = ("streaming", "interval", "daily")

D = TypeVar("D", bound=type[Detector])


@dataclass(frozen=True)
class DetectorSpec:
    """What the registry knows of one detector class."""

    key: str
    cls: type[Detector]
    cadence: Cadence
    #: History the detector needs before the time it judges [s] (its default parameters).
    history_s: float
    #: Run order within a suite (lower first; findings keep this order).
    order: int

    @property
    def alert_types(self) -> tuple[str, ...]:
        return self.cls.alert_types

    @property
    def params(self) -> list[str]:
        return self.cls._param_names()


_REGISTRY: dict[str, DetectorSpec] = {}
_loaded = False


def detector_key(cls: type[Detector]) -> str:
    """Config key of a detector class: its name in snake_case (``PhaseBreak`` -> ``phase_break``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def register(*, cadence: Cadence, history_days: float = 0.0, order: int = 100) -> Callable[[D], D]:
    """Class decorator: add a detector to the registry.

    ``history_days`` is the history it needs before the judged time with its default
    parameters; ``order`` its place in a suite run (rules that others' findings depend on
    first). The class's ``alert_types`` must be catalogue types.
    """
    if cadence not in CADENCES:
        raise ValueError(f"cadence {cadence!r}; expected one of {', '.join(CADENCES)}")

    def deco(cls: D) -> D:
        unknown = [t for t in cls.alert_types if t not in CATALOGUE]
        if not cls.alert_types or unknown:
            raise ValueError(f"{cls.__name__}: alert_types {unknown or '()'} not in the catalogue")
        key = detector_key(cls)
        if key in _REGISTRY and _REGISTRY[key].cls is not cls:
            raise ValueError(f"detector {key!r} registered twice")
        _REGISTRY[key] = DetectorSpec(key, cls, cadence, history_days * 86400.0, order)
        return cls

    return deco


def load_detectors() -> dict[str, DetectorSpec]:
    """Import every module of ``analytics/detectors`` once; the registry, in run order."""
    global _loaded
    if not _loaded:
        import meterwatch.analytics.detectors as pkg

        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
        _loaded = True
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def check_detector_params(params: Mapping[str, Any]) -> None:
    """ValueError naming the first unknown detector, unknown parameter or bad value.

    ``params`` is keyed by detector key, e.g. ``{"consumption_spike": {"ratio": 3.0}}``;
    a detector's own ``__init__`` checks its values (and names the parameter).
    """
    specs = load_detectors()
    for key, kwargs in params.items():
        if key not in specs:
            raise ValueError(f"unknown detector {key!r}; known: {', '.join(specs)}")
        if kwargs is None:
            continue
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"{key}: expected a mapping of parameters, got {kwargs!r}")
        allowed = specs[key].params
        bad = [name for name in kwargs if name not in allowed]
        if bad:
            raise ValueError(
                f"{key}: unknown parameter(s) {', '.join(map(repr, bad))}; known: {', '.join(allowed)}"
            )
        try:
            specs[key].cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}: {exc}") from None


def build_detectors(
    params: Mapping[str, Mapping[str, Any] | None] | None = None,
    cadences: Iterable[str] | None = None,
) -> list[Detector]:
    """One instance of every registered detector (of ``cadences``, default all), in run order,
    with ``params[key]`` overriding defaults; bad params raise ValueError (see above)."""
    params = params or {}
    check_detector_params(params)
    wanted = set(CADENCES if cadences is None else cadences)
    return [
        spec.cls(**dict(params.get(key) or {}))
        for key, spec in load_detectors().items()
        if spec.cadence in wanted
    ]


def spec_of(detector: Detector | type[Detector]) -> DetectorSpec:
    """The registry entry of a detector (instance or class)."""
    cls = detector if inspect.isclass(detector) else type(detector)
    return load_detectors()[detector_key(cls)]


def history_s(detectors: Iterable[Detector]) -> float:
    """The longest history any of ``detectors`` declares [s]."""
    return max((spec_of(d).history_s for d in detectors), default=0.0)
