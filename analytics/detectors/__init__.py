"""Detector modules. Each registers its detectors (``@register``, meterwatch.analytics.registry);
every module in this folder is imported by ``registry.load_detectors()``, so adding a detector
touches its own module only."""
