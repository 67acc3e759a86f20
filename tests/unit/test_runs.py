"""Runs of a flagged condition (analytics.window.runs): a condition held by a few meters is
found on their rows only, with the same runs as over every row."""

from __future__ import annotations

import numpy as np
import pytest

from meterwatch.analytics.window import runs


@pytest.mark.parametrize("seed", range(10))
def test_runs_of_a_few_meters_equal_the_runs_over_every_row(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_m, n_c = 40, 30
    flag = np.zeros((n_m, n_c), dtype=bool)
    few = rng.choice(n_m, 5, replace=False)
    flag[few] = rng.random((5, n_c)) < 0.5
    present = rng.random((n_m, n_c)) < 0.8
    last_col = np.where(present, np.arange(n_c), -1).max(axis=1)
    sparse = runs(flag, present, last_col)
    # The same rows below as many rows holding everywhere: the path over every row.
    dense = runs(
        np.r_[flag, np.ones((n_m + 1, n_c), dtype=bool)],
        np.r_[present, np.ones((n_m + 1, n_c), dtype=bool)],
        np.r_[last_col, np.full(n_m + 1, n_c - 1)],
    )
    mine = dense.row < n_m
    assert len(sparse) > 0
    for name in ("row", "c0", "c1", "ongoing", "n"):
        np.testing.assert_array_equal(getattr(sparse, name), getattr(dense, name)[mine])
    without_last = runs(flag, present)
    np.testing.assert_array_equal(without_last.ongoing, sparse.ongoing)
