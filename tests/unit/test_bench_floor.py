"""The analytics floor's gap-aware median (bench/analytics_floor.py) is numpy's nanmedian."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bench.analytics_floor import gap_aware_median


@pytest.mark.parametrize("days", [7, 6, 1])
def test_gap_aware_median_equals_nanmedian(days: int) -> None:
    rng = np.random.default_rng(days)
    x = rng.random((300, days, 96)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[0, :, 0] = np.nan  # every day missing: NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(x, axis=1)
    got = gap_aware_median(x, axis=1)
    assert got.shape == want.shape and np.isnan(got[0, 0])
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
