"""The ground floor: canonical schema, alert catalogue, exception tree, clock, stats, registry model.

Every package imports it; it imports nothing else of the project (tests/unit/test_layers.py).
"""
