"""MeterWatch: smart-meter data pipeline (collect, store, validate, detect, alert)."""

__version__ = "0.1.0"
