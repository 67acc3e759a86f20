"""``alerts`` section: the feed, lifecycle, SLA, audit, delivery and the engineers' page.

``alerts.delivery`` is composed from the sink registry (:mod:`meterwatch.alerts.delivery.registry`):
one sub-section per registered sink, plus the outbox directory, links and retry policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, create_model, model_validator

from meterwatch.alerts.delivery.registry import load_sinks
from meterwatch.core.config import Duration, Section


class RetryConfig(Section):
    """``alerts.delivery.retry``: exponential backoff with jitter between delivery attempts."""

    initial: Duration = Field(1.0, gt=0)
    max: Duration = Field(300.0, gt=0)
    jitter: float = Field(0.2, ge=0, lt=1)
    give_up_after: Duration = Field(86400.0, gt=0)


def _compose_delivery() -> type[Section]:
    fields: dict[str, Any] = {
        "state_dir": (Path, Path("var/delivery")),
        "external_url": (str, ""),
    }
    for name, spec in load_sinks().items():
        fields[name] = (spec.config, spec.default)
    fields["retry"] = (RetryConfig, RetryConfig())
    return create_model(  # type: ignore[call-overload,no-any-return]
        "DeliveryConfig",
        __base__=Section,
        __doc__="``alerts.delivery``: where alert changes are sent, through a persistent outbox.",
        **fields,
    )


if TYPE_CHECKING:

    class DeliveryConfig(Section):
        """Typed view for mypy: sink sections are looked up by registered sink name."""

        state_dir: Path = Path("var/delivery")
        external_url: str = ""
        retry: RetryConfig = RetryConfig()

        def __getattr__(self, name: str) -> Any: ...

else:
    DeliveryConfig = _compose_delivery()


class AlertHttpConfig(Section):
    """``alerts.http``: JSON API, SSE stream and engineers' web page (token auth)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8470, ge=0, le=65535)
    token_env: str = "MW_ALERTS_TOKEN"


class SlaOverrideConfig(Section):
    """Allowed times for alerts of a severity and/or customer class (most specific wins)."""

    severity: Literal["critical", "major", "minor", "warning", "info"] | None = None
    customer_class: Literal["residential", "commercial", "industrial"] | None = None
    acknowledge: Duration | None = Field(None, gt=0)
    resolve: Duration | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _keys(self) -> SlaOverrideConfig:
        if self.severity is None and self.customer_class is None:
            raise ValueError("an SLA override needs severity and/or customer_class")
        if self.acknowledge is None and self.resolve is None:
            raise ValueError("an SLA override needs acknowledge and/or resolve")
        return self


class SlaConfig(Section):
    """Service-level deadlines, counted from when an alert opens (utility service standard)."""

    acknowledge: Duration = Field(2 * 3600.0, gt=0)
    resolve: Duration = Field(24 * 3600.0, gt=0)
    overrides: list[SlaOverrideConfig] = []


class AuditConfig(Section):
    path: Path | None = None  # default: <state_dir>/audit.jsonl
    key_env: str = "MW_AUDIT_KEY"
    checkpoint_every: int = Field(100, ge=1)


class AlertsConfig(Section):
    feed: Path = Path("var/alerts.jsonl")
    state_dir: Path | None = None  # default: next to the feed, <feed dir>/<feed stem>-state
    verify_after_intervals: int = Field(3, ge=0)
    flap_hold: Duration = Field(7200.0, ge=0)
    sla: SlaConfig = SlaConfig()
    escalate_at_fraction: float = Field(0.8, gt=0, lt=1)
    audit: AuditConfig = AuditConfig()
    console: bool = True
    delivery: DeliveryConfig = DeliveryConfig()
    http: AlertHttpConfig = AlertHttpConfig()
    auto_resolve_categories: list[
        Literal["consumption", "theft", "billing", "equipment", "data_quality"]
    ] = [
        "equipment",
        "consumption",
        "data_quality",
    ]
