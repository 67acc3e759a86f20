"""Vectorized analytics over canonical reading frames: detectors (and later VEE)."""
