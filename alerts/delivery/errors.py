"""Delivery errors: every sink translates its library's exceptions into :class:`DeliveryError`."""

from __future__ import annotations

from meterwatch.errors import MeterWatchError


class DeliveryError(MeterWatchError):
    """A sink could not deliver a notification (it will be retried). Carries the sink name."""

    def __init__(self, sink: str, message: str, *, retryable: bool = True):
        self.sink = sink
        self.retryable = retryable
        super().__init__(f"delivery to {sink}: {message}")
