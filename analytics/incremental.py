"""Incremental validation: VEE over the intervals completed since the last run.

The service's validation job asks :class:`IncrementalValidation` where to read from, plans the
per-meter windows on what it read, validates them and, once stored, commits the new ends. An
interval is complete once it ended ``vee.max_read_spacing_intervals`` intervals ago and every
meter read during the last ``every_s`` can interpolate a boundary at or after its end
(:func:`~meterwatch.analytics.vee.last_interpolable_boundary`), so a window end never cuts a gap
and leaves it ``missing`` where the next read lets it be estimated; the first run starts at each
meter's first stored read. Meters not heard from this period (or with no such boundary) are
validated up to where every heard meter is complete, so they do not hold the window back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from meterwatch.analytics.params import VeeConfig
from meterwatch.analytics.vee import (
    ValidatedReadings,
    empty_validated,
    last_interpolable_boundary,
    validate,
)


def run_vee(
    readings: pd.DataFrame,
    meters: pd.DataFrame,
    vee: VeeConfig | None = None,
    *,
    timezone: str = "UTC",
    start: Any = None,
    end: Any = None,
    now: Any = None,
) -> ValidatedReadings:
    """:func:`~meterwatch.analytics.vee.validate` with the ``vee`` section's thresholds and grid."""
    vee = vee or VeeConfig()
    return validate(
        readings,
        meters,
        vee.params(),
        interval_s=int(vee.interval),
        rule_set_version=vee.rule_set_version,
        start=start,
        end=end,
        now=now,
        timezone=timezone,
    )


@dataclass(frozen=True)
class ValidationPlan:
    """Windows of one run: every meter from ``done`` (exclusive interval start) to ``ends``."""

    start: pd.Timestamp
    end: pd.Timestamp
    done: pd.Series
    ends: pd.Series


class IncrementalValidation:
    """Plans and runs VEE over the intervals completed since the last committed run."""

    def __init__(self, vee: VeeConfig, *, every_s: float, timezone: str = "UTC"):
        self.vee = vee
        self.timezone = timezone
        self.step = pd.Timedelta(seconds=vee.interval)
        self.every = pd.Timedelta(seconds=every_s)
        self.history = pd.Timedelta(days=max(vee.like_day_search_days, vee.usage_history_days))
        #: Per meter: validated readings are written up to here (exclusive interval start).
        self.done: pd.Series | None = None

    def read_since(self, now: pd.Timestamp) -> pd.Timestamp:
        """Readings from here on are needed (the new windows and their estimation history)."""
        start = (now - self.every) if self.done is None else self.done.min()
        return start - self.history

    def plan(
        self, readings: pd.DataFrame, meter_ids: pd.Index, now: pd.Timestamp
    ) -> ValidationPlan | None:
        """Each meter's window, or None when nothing new is complete."""
        if readings.empty:
            return None
        vee = self.vee
        bound = last_interpolable_boundary(
            readings,
            now - self.step * vee.max_read_spacing_intervals,
            interval_s=int(vee.interval),
            max_read_spacing_intervals=vee.max_read_spacing_intervals,
        )
        bound = bound[bound >= now - self.every]
        if bound.empty:
            return None
        meters = pd.Index(meter_ids).union(bound.index)
        ends = bound.reindex(meters).fillna(bound.min())
        done = self.done
        if done is None:  # a meter's first interval starts after its first read
            first = readings.groupby("meter_id")["ts"].min().reindex(meters)
            first = first.fillna(readings["ts"].min()).clip(lower=now - self.every)
            done = first.dt.ceil(self.step)
        done = done.reindex(meters).fillna(done.min())
        ends = ends.where(ends >= done, done)
        start, end = done.min(), ends.max()
        if end <= start:
            return None
        return ValidationPlan(start, end, done, ends)

    def validate(
        self,
        plan: ValidationPlan,
        readings: pd.DataFrame,
        registry: pd.DataFrame,
        now: pd.Timestamp,
    ) -> pd.DataFrame:
        """Validated intervals of the plan's windows (not yet stored; edits not applied).

        One VEE run per distinct window end (a handful of boundaries), each on its meters only:
        a grid running past a meter's end would join the gap before it with one after and leave
        both unestimated.
        """
        parts = []
        for group_end, group in plan.ends.groupby(plan.ends):
            ids = group.index
            if group_end <= plan.done[ids].min():
                continue  # nothing new for these meters
            parts.append(
                run_vee(
                    readings[readings["meter_id"].isin(ids)],
                    registry[registry["meter_id"].isin(ids)],
                    self.vee,
                    timezone=self.timezone,
                    start=plan.start - self.history,
                    end=group_end,
                    now=now,
                ).intervals
            )
        iv = pd.concat(parts, ignore_index=True) if parts else empty_validated()
        keep = (iv["interval_start"] >= iv["meter_id"].map(plan.done)).to_numpy()
        return iv[keep].reset_index(drop=True)

    def commit(self, plan: ValidationPlan) -> None:
        """The plan's intervals are stored: the next run starts at its ends."""
        self.done = plan.ends
