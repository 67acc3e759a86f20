"""Tolerant threshold comparisons (analytics.base): float32 values compared with a float32
bound give exactly what comparing them widened to float64 gives."""

from __future__ import annotations

import numpy as np
import pytest

from meterwatch.analytics import base


@pytest.mark.parametrize("seed", range(20))
def test_float32_comparisons_equal_the_float64_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.normal(230, 30, (40, 30)).astype(np.float32)
    v[rng.random(v.shape) < 0.05] = np.nan
    # Thresholds on, between and far beyond float32 values; per meter and scalar.
    scalars = [rng.normal(230, 30), float(v[3, 4]), float(v[1, 1]) + 1e-9, 1e300, -1e300, np.nan]
    per_meter = np.where(rng.random((40, 1)) < 0.5, scalars[0], v[:, :1].astype(float))
    for thr in [*scalars, per_meter]:
        t = np.asarray(thr, dtype=float)
        for fn, op, sign in (
            (base.strictly_less, np.less, -1),
            (base.strictly_greater, np.greater, 1),
            (base.at_least, np.greater_equal, -1),
        ):
            with np.errstate(invalid="ignore"):
                want = op(v.astype(np.float64), t + sign * base._tol(v, t))
            np.testing.assert_array_equal(fn(v, t), want)
