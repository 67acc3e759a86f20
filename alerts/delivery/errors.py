"""Delivery errors: re-exported from :mod:`meterwatch.errors` (the project's one exception tree).

Every sink translates its library's exceptions into :class:`DeliveryError`.
"""

from __future__ import annotations

from meterwatch.errors import DeliveryError

__all__ = ["DeliveryError"]
