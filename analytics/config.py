"""Config sections the analytics package owns: ``analytics`` (schedule, detectors), ``vee``,
``tariffs`` and ``billing``.

``analytics.detectors`` is validated against the detector registry
(:mod:`meterwatch.analytics.registry`): an unknown detector or parameter is an error naming its
path and the known names, a bad value the detector's own message.
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

from pydantic import AfterValidator, Field, create_model, model_validator

from meterwatch.analytics.params import (
    RULE_SET_VERSION,
    BillingConfig,
    TariffConfig,
    TouPeriodConfig,
    VeeConfig,
    VeeParams,
)
from meterwatch.core.config import Duration, Section

__all__ = [
    "RULE_SET_VERSION",
    "AnalyticsConfig",
    "BillingConfig",
    "DetectorsConfig",
    "TariffConfig",
    "TouPeriodConfig",
    "VeeConfig",
    "VeeParams",
]


def _params_model(spec: Any) -> type[Section]:
    """``analytics.detectors.<key>``: the keyword parameters of the detector's ``__init__``
    (types from its annotations, defaults from its signature); values are checked by
    building the detector, so its own message names a bad one."""
    cls = spec.cls
    hints = get_type_hints(cls.__init__)
    fields: dict[str, Any] = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        fields[name] = (hints.get(name, Any), p.default)

    def _build(self: Section) -> Section:
        try:
            cls(**self.model_dump(exclude_unset=True))
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return self

    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{cls.__name__}Params",
        __base__=Section,
        __doc__=f"``analytics.detectors.{spec.key}``: parameters of {cls.__name__}.",
        __validators__={"_build": model_validator(mode="after")(_build)},  # type: ignore[dict-item]
        **fields,
    )


def _compose_detectors() -> type[Section]:
    from meterwatch.analytics.registry import load_detectors

    fields = {key: (_params_model(spec) | None, None) for key, spec in load_detectors().items()}
    return create_model(  # type: ignore[call-overload,no-any-return]
        "DetectorsConfig",
        __base__=Section,
        __doc__="``analytics.detectors``: per-detector parameters (README's detector table).",
        **fields,
    )


if TYPE_CHECKING:

    class DetectorsConfig(Section):
        """Typed view for mypy: one optional parameter section per registered detector."""

        def __getattr__(self, name: str) -> Any: ...

else:
    DetectorsConfig = _compose_detectors()


_ADDRESS = re.compile(
    r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$"
)


def scheduler_address(value: str) -> str:
    """A Dask scheduler address ``tcp://HOST:PORT`` (or ``tls://``; ``HOST:PORT`` means tcp),
    normalized; ValueError naming the value and the expected form otherwise."""
    m = _ADDRESS.match(value.strip()) if isinstance(value, str) else None
    scheme = (m.group("scheme") or "tcp") if m else ""
    if m is None or scheme not in ("tcp", "tls") or not 0 < int(m.group("port")) < 65536:
        raise ValueError(
            f"{value!r} is not a Dask scheduler address; use tcp://HOST:PORT (a scheduler "
            "listens on port 8786 by default) or tls://HOST:PORT"
        )
    return f"{scheme}://{m.group('host')}:{int(m.group('port'))}"


class AnalyticsConfig(Section):
    """``analytics``: when detectors and validation run, how much history they see, in how
    many worker processes, and per-detector parameters (``detectors: {consumption_spike:
    {ratio: 3.0}}``; defaults and meanings in README's detector table)."""

    interval: Duration = 3600.0
    daily_interval: Duration = 86400.0
    window: Duration = 8 * 86400.0
    # VEE over the completed window into validated_readings, every this much service time and
    # at stop; null: off (billing export still validates on demand)
    validation_interval: Duration | None = Field(86400.0, gt=0)
    # Dask scheduler on which `meterwatch analyze` runs its partitions (docs/dask.md); null:
    # in this process. The service does not use it (analytics.workers).
    scheduler: Annotated[str, AfterValidator(scheduler_address)] | None = None
    # How long to wait for the scheduler to answer and for its first worker
    scheduler_timeout: Duration = Field(10.0, gt=0)
    # Worker processes of the service's analytics (detector runs, validation, streaming
    # detection), off the collector's event loop; 0: in the service process (threads), the
    # smallest footprint, but analytics then delays polls. Project choice: one process, enough
    # to keep polls on time (docs/benchmarks.md) at ~150 MiB more memory.
    workers: int = Field(1, ge=0)
    detectors: DetectorsConfig = DetectorsConfig()
    # Where fitted baselines are kept, one file per version (meterwatch baselines fit)
    baselines_dir: str = "var/baselines"

    def detector_params(self) -> dict[str, dict[str, Any]]:
        """The parameters set in the config, by detector key (defaults left out)."""
        out = self.detectors.model_dump(exclude_unset=True, exclude_none=True)
        return {key: dict(value) for key, value in out.items()}
