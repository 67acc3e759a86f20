"""Errors of the alert lifecycle and the audit log (subclasses of meterwatch.errors.MeterWatchError).

MeterWatchError
└── AlertError                 an alert operation was refused
    ├── AlertNotFound          no alert with that id (carries ``alert_id``)
    ├── AlertStateError        the transition is not allowed from the alert's status
    └── AuditError             the audit log cannot be read, written or verified
"""

from __future__ import annotations

from meterwatch.errors import MeterWatchError


class AlertError(MeterWatchError):
    """An alert operation was refused."""


class AlertNotFound(AlertError, KeyError):
    """No alert with this id in the feed."""

    def __init__(self, alert_id: str, where: str = ""):
        self.alert_id = alert_id
        self.where = where
        super().__init__(f"no alert with id {alert_id!r}" + (f" in {where}" if where else ""))

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AlertStateError(AlertError):
    """A transition that the alert's current status does not allow (e.g. acknowledge a resolved alert)."""

    def __init__(self, alert_id: str, status: str, action: str):
        self.alert_id = alert_id
        self.status = status
        self.action = action
        super().__init__(f"cannot {action} alert {alert_id}: it is already {status}")


class AuditError(AlertError):
    """The audit log could not be read, written or checked."""
