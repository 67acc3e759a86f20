"""Test package (importable as tests.*: shared helpers live in tests.support)."""
