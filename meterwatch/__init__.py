"""MeterWatch: smart-meter data pipeline (collect, store, validate, detect, alert)."""

from meterwatch.core.memory import one_heap

__version__ = "0.1.0"

one_heap()
