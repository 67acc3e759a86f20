"""Errors of the alert lifecycle and the audit log: re-exported from :mod:`meterwatch.errors`.

The classes live in the project's one exception tree; this module keeps ``from alerts.errors
import …`` working.
"""

from __future__ import annotations

from meterwatch.errors import AlertError, AlertNotFound, AlertStateError, AuditError

__all__ = ["AlertError", "AlertNotFound", "AlertStateError", "AuditError"]
