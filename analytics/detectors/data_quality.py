"""Data-quality rules: gaps, silent meters, duplicate readings, off-grid times, non-numbers.

They judge what arrived, not what it measures: the window's read times (present cells) and
what the grid could not hold as is (:class:`analytics.window.DataQuality`: duplicates,
non-numeric cells). Findings of one meter at most ``merge_hours`` apart are one finding, as for
the threshold rules, so a flaky meter gives at most one alert of a kind a day.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from meterwatch.analytics.base import (
    Detector,
    check_positive,
    findings_frame,
    plain,
    short_ts,
)
from meterwatch.analytics.registry import register
from meterwatch.analytics.window import NO_TIME, Window, meter_time_sort, row_chunks, utc
from meterwatch.core.schema import READING_FIELDS, empty_findings

_H = 3600 * 10**9


def _check_merge(merge_hours: float) -> float:
    if not float(merge_hours) >= 0:
        raise ValueError(f"merge_hours must be >= 0, got {merge_hours!r}")
    return float(merge_hours)


@register(cadence="interval", order=300)
class MissingData(Detector):
    """Gaps in a meter's readings: ``min_gap_hours`` or more between two consecutive readings,
    shorter than :class:`MeterOffline`'s ``offline_hours`` (a longer silence is that meter
    being offline: one cause, one alert).

    The gap is over once data resume, so ``starts_at`` is the last reading before it and
    ``ends_at`` the first after it. A silence that reaches the end of the window is
    :class:`MeterOffline`'s.

    Parameters
    ----------
    min_gap_hours : float
        Shortest gap reported [h]. Default 1 (project choice: four missed 15-minute
        intervals; the collector retries a failing meter within minutes, so a gap this long
        is lost data, not a late read).
    max_gap_hours : float
        Gaps this long or longer are left to :class:`MeterOffline` [h]. Default 12, its
        ``offline_hours``.
    merge_hours : float
        Gaps of a meter at most this far apart are one finding [h]. Default 24.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("missing_data",)

    def __init__(
        self, min_gap_hours: float = 1.0, max_gap_hours: float = 12.0, merge_hours: float = 24.0
    ) -> None:
        check_positive("min_gap_hours", min_gap_hours)
        check_positive("max_gap_hours", max_gap_hours)
        if not float(max_gap_hours) > float(min_gap_hours):
            raise ValueError(
                f"max_gap_hours ({max_gap_hours}) must exceed min_gap_hours ({min_gap_hours})"
            )
        self.min_gap_hours = min_gap_hours
        self.max_gap_hours = max_gap_hours
        self.merge_hours = _check_merge(merge_hours)

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per gap (or merged gaps) of a meter."""
        pres = w.present
        if not pres.any():
            return empty_findings()
        lo, hi = float(self.min_gap_hours) * _H, float(self.max_gap_hours) * _H
        parts = []
        for rs in row_chunks(w.n_meters, w.n_cells):  # meters in chunks: bounded memory
            p_c, t_c = pres[rs], w.t[rs]
            last = np.maximum.accumulate(np.where(p_c, t_c, NO_TIME), axis=1)
            before = np.concatenate([np.full((last.shape[0], 1), NO_TIME), last[:, :-1]], axis=1)
            gap = np.where(p_c & (before != NO_TIME), t_c - before, 0)
            r_c, c_c = np.nonzero((gap >= lo) & (gap < hi))
            parts.append((r_c + rs.start, before[r_c, c_c], t_c[r_c, c_c]))
        rows_ = np.concatenate([r for r, _, _ in parts])
        if rows_.size == 0:
            return empty_findings()
        starts = np.concatenate([a for _, a, _ in parts])
        ends = np.concatenate([b for _, _, b in parts])
        # Merge gaps of a meter: consecutive gaps whose start is within merge_hours of the
        # previous gap's end.
        joined = (rows_[1:] == rows_[:-1]) & (starts[1:] - ends[:-1] <= self.merge_hours * _H)
        first = np.flatnonzero(np.r_[True, ~joined])
        last_i = np.r_[first[1:] - 1, rows_.size - 1]
        params = plain(self.get_params())
        out = []
        for a, b in zip(first.tolist(), last_i.tolist(), strict=True):  # findings only
            r = int(rows_[a])
            lost = (ends[a : b + 1] - starts[a : b + 1]).sum() / _H
            t0, t1 = utc(starts[a]), utc(ends[b])
            n = b - a + 1
            longest = float((ends[a : b + 1] - starts[a : b + 1]).max() / _H)
            out.append(
                {
                    "type": "missing_data",
                    "severity": self.severity,
                    "meter_id": w.ids[r],
                    "transformer_id": w.meters.transformer_id[r],
                    "starts_at": t0,
                    "ends_at": t1,
                    "summary": (
                        f"No readings for {longest:.1f} h"
                        + (f" ({n} gaps, {lost:.1f} h in all)" if n > 1 else "")
                        + f" from {short_ts(t0)} to {short_ts(t1)}"
                    ),
                    "evidence": plain(
                        {
                            "rule": "time between consecutive readings >= min_gap_hours",
                            "thresholds": params,
                            "gaps": n,
                            "longest_gap_h": longest,
                            "missing_h": float(lost),
                            "window": w.meter_window(r),
                        }
                    ),
                }
            )
        return findings_frame(out)


@register(cadence="interval", order=310)
class MeterOffline(Detector):
    """A meter silent for ``offline_hours`` or more: between two of its readings (``ends_at``
    is the reading that ended the silence) or up to the end of the data (``ends_at`` NaT).

    The reference for the end is the latest reading of any meter in the window (the data's
    end), so a file or a store read is judged as of its own time; a registered meter with no
    reading in the window at all is offline since the window's start. The collector raises the same alert type as soon as a polled meter stops answering
    (``collector.modbus.offline_after``); this rule also catches meters that push (MQTT) and
    silent meters in files.

    Parameters
    ----------
    offline_hours : float
        Silence that makes a meter offline [h]. Default 12 (project choice: beyond any
        missed-poll retry or gateway restart).
    """

    alert_types: ClassVar[tuple[str, ...]] = ("meter_offline",)

    def __init__(self, offline_hours: float = 12.0) -> None:
        check_positive("offline_hours", offline_hours)
        self.offline_hours = offline_hours

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per silence of a meter (ended, or still going at the data's end)."""
        first, last, n = w.reading_span()
        ext = w.extent()  # the fleet's when the window is one partition of it
        if ext is None:
            return empty_findings()
        limit = float(self.offline_hours) * _H
        end, start = ext.last, ext.first
        events: list[tuple[int, int, int | None]] = []  # (row, silent since, back at)
        pres = w.present
        lastseen = np.maximum.accumulate(np.where(pres, w.t, NO_TIME), axis=1)
        before = np.concatenate([np.full((w.n_meters, 1), NO_TIME), lastseen[:, :-1]], axis=1)
        ended = pres & (before != NO_TIME) & (w.t - before >= limit)
        for r, c in zip(*np.nonzero(ended), strict=True):  # loop over findings only
            events.append((int(r), int(before[r, c]), int(w.t[r, c])))
        since = np.where(n > 0, last, start)
        for r in np.flatnonzero((end - since) >= limit).tolist():  # loop over findings only
            events.append((r, int(since[r]), None))
        params = plain(self.get_params())
        out = []
        for r, t0_ns, back in events:
            t0 = utc(t0_ns)
            never = n[r] == 0
            upto = end if back is None else back
            hours = (upto - t0_ns) / _H
            if back is not None:
                summary = f"Silent for {hours:.1f} h from {short_ts(t0)} to {short_ts(utc(back))}"
            elif never:
                summary = f"No reading in the window ({hours:.1f} h up to {short_ts(utc(end))})"
            else:
                summary = f"Silent since {short_ts(t0)} ({hours:.1f} h up to {short_ts(utc(end))})"
            out.append(
                {
                    "type": "meter_offline",
                    "severity": self.severity,
                    "meter_id": w.ids[r],
                    "transformer_id": w.meters.transformer_id[r],
                    "starts_at": t0,
                    "ends_at": pd.NaT if back is None else utc(back),
                    "summary": summary,
                    "evidence": plain(
                        {
                            "rule": "no reading for >= offline_hours (between two readings, or "
                            "up to the latest reading of any meter in the window)",
                            "thresholds": params,
                            "last_reading": None if never else t0,
                            "back_at": None if back is None else utc(back),
                            "data_end": utc(end),
                            "silent_h": float(hours),
                            "readings_in_window": int(n[r]),
                        }
                    ),
                }
            )
        return findings_frame(out)


def _grouped(codes: np.ndarray, t: np.ndarray, merge_ns: float) -> list[tuple[int, np.ndarray]]:
    """Events (meter row, instant) grouped per meter into bursts at most ``merge_ns`` apart:
    ``[(row, positions), ...]`` over the events sorted by meter and time."""
    if codes.size == 0:
        return []
    order, c, tt = meter_time_sort(codes, t)
    joined = (c[1:] == c[:-1]) & (tt[1:] - tt[:-1] <= merge_ns)
    first = np.flatnonzero(np.r_[True, ~joined])
    last = np.r_[first[1:] - 1, c.size - 1]
    return [
        (int(c[a]), order[a : b + 1]) for a, b in zip(first.tolist(), last.tolist(), strict=True)
    ]


@register(cadence="interval", order=320)
class DuplicateReading(Detector):
    """Readings given more than once for one meter and instant.

    Exact repeats (the same values again: a redelivery, a file concatenated twice) are counted
    apart from *conflicting* duplicates (other values for the same meter and time: which one
    is billed?); a finding with conflicting values is ``major``, one with exact repeats only
    keeps the catalogue's ``minor``. The readings themselves are collapsed deterministically
    (analytics.window), so rules and billing see one value per instant.

    Parameters
    ----------
    merge_hours : float
        Duplicates of a meter at most this far apart are one finding [h]. Default 24.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("duplicate_reading",)

    def __init__(self, merge_hours: float = 24.0) -> None:
        self.merge_hours = _check_merge(merge_hours)

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per burst of duplicates of a meter."""
        ec, et = w.dq.exact_duplicates
        cc, ct = w.dq.conflicting_duplicates
        codes = np.r_[ec, cc].astype(np.int64)
        t = np.r_[et, ct].astype(np.int64)
        kind = np.r_[np.zeros(ec.size, bool), np.ones(cc.size, bool)]
        params = plain(self.get_params())
        out = []
        for r, pos in _grouped(codes, t, self.merge_hours * _H):  # loop over findings only
            conflicting = kind[pos]
            n_conf, n_exact = int(conflicting.sum()), int((~conflicting).sum())
            t0, t1 = utc(t[pos].min()), utc(t[pos].max())
            parts = []
            if n_conf:
                parts.append(
                    f"{n_conf} instant{'s' if n_conf != 1 else ''} with conflicting values"
                )
            if n_exact:
                parts.append(f"{n_exact} exact repeat{'s' if n_exact != 1 else ''}")
            out.append(
                {
                    "type": "duplicate_reading",
                    "severity": "major" if n_conf else self.severity,
                    "meter_id": w.ids[r],
                    "transformer_id": w.meters.transformer_id[r],
                    "starts_at": t0,
                    "ends_at": t1,
                    "summary": f"Duplicate readings: {' and '.join(parts)} from {short_ts(t0)} to {short_ts(t1)}",
                    "evidence": plain(
                        {
                            "rule": "more than one reading for one meter and ts",
                            "thresholds": params,
                            "conflicting": n_conf,
                            "exact": n_exact,
                            "conflicting_at": [utc(x) for x in np.sort(t[pos][conflicting])[:5]],
                            "kind": "conflicting" if n_conf else "exact",
                        }
                    ),
                }
            )
        return findings_frame(out)


@register(cadence="interval", order=330)
class OffGridReading(Detector):
    """Readings off the meter's usual place in the interval grid (e.g. a clock or schedule
    shifted by minutes).

    A meter's usual offset is the most common time of its readings within the grid's cell
    (to the nearest ``tolerance_s``); a reading more than ``tolerance_s`` from it (either way
    round the cell) is off-grid. Meters polled at unaligned but steady times keep their own
    offset and are not flagged. Judged only for meters with at least ``min_readings``.

    Parameters
    ----------
    tolerance_s : float
        Allowed distance from the usual offset [s]. Default 120 (project choice: above poll
        jitter on a loaded bus, below the 7-minute shifts seen in real data).
    min_readings : int
        Readings a meter needs to have a usual offset [readings]. Default 8.
    merge_hours : float
        Off-grid readings of a meter at most this far apart are one finding [h]. Default 24.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("off_grid_reading",)
    #: Parameters measured in the collector's wall-clock timing: on a simulated clock running
    #: N times faster, the service scales them by N (poll jitter of 50 ms is 2 min at 2400x).
    wall_time_params: ClassVar[tuple[str, ...]] = ("tolerance_s",)

    def __init__(
        self, tolerance_s: float = 120.0, min_readings: int = 8, merge_hours: float = 24.0
    ) -> None:
        check_positive("tolerance_s", tolerance_s)
        if int(min_readings) != min_readings or min_readings < 2:
            raise ValueError(f"min_readings must be an integer >= 2, got {min_readings!r}")
        self.tolerance_s = tolerance_s
        self.min_readings = min_readings
        self.merge_hours = _check_merge(merge_hours)

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per burst of off-grid readings of a meter."""
        pres = w.present
        n = pres.sum(axis=1)
        if not pres.any() or w.step <= int(self.tolerance_s * 1e9):
            return empty_findings()
        tol = int(self.tolerance_s * 1e9)
        n_bins = max(int(w.step // tol), 1)
        judged = n >= int(self.min_readings)
        usual = np.zeros(w.n_meters, dtype=np.int64)
        found = []
        ends = w.ends
        for rs in row_chunks(w.n_meters, w.n_cells):  # meters in chunks: bounded memory
            p_c, m_c = pres[rs], rs.stop - rs.start
            # A read of cell c lies in (end - step, end]: its offset (t - g0) % step is
            # t - end + step, or 0 on the end itself (a subtraction, not a division).
            before_end = w.t[rs] - ends
            offset = np.where(p_c & (before_end < 0), before_end + w.step, 0)
            del before_end
            if not offset.any():  # every read on its cell's end: usual offset 0, none off
                continue
            bins = np.minimum(offset // tol, n_bins - 1)
            r, c = np.nonzero(p_c)
            counts = np.bincount(r * n_bins + bins[r, c], minlength=m_c * n_bins)
            usual_bin = counts.reshape(m_c, n_bins).argmax(axis=1)
            # The usual offset: the mean offset of the readings in the most common bin.
            in_mode = bins[r, c] == usual_bin[r]
            tot = np.bincount(
                r[in_mode], weights=offset[r, c][in_mode].astype(float), minlength=m_c
            )
            num = np.bincount(r[in_mode], minlength=m_c)
            u = usual[rs] = np.round(tot / np.maximum(num, 1)).astype(np.int64)
            dist = np.abs(offset - u[:, None])
            dist = np.minimum(dist, w.step - dist)  # round the cell: 14:59 is next to 00:00
            r_o, c_o = np.nonzero(p_c & (dist > tol) & judged[rs, None])
            found.append((r_o + rs.start, w.t[rs][r_o, c_o], offset[r_o, c_o] - u[r_o]))
        none = np.zeros(0, dtype=np.int64)
        rows_ = np.concatenate([none, *(r for r, _, _ in found)])
        t = np.concatenate([none, *(x for _, x, _ in found)])
        shift = np.concatenate([none, *(x for _, _, x in found)])
        # Reads displaced from their cell by a later one (two reads in one cell) are judged too.
        cc, ct = w.dq.collisions
        if cc.size:
            c_off = (ct - w.g0) % w.step
            c_dist = np.abs(c_off - usual[cc])
            c_dist = np.minimum(c_dist, w.step - c_dist)
            c_hit = (c_dist > tol) & judged[cc]
            rows_ = np.r_[rows_, cc[c_hit]]
            t = np.r_[t, ct[c_hit]]
            shift = np.r_[shift, (c_off - usual[cc])[c_hit]]
        if rows_.size == 0:
            return empty_findings()
        params = plain(self.get_params())
        out = []
        for row, pos in _grouped(rows_, t, self.merge_hours * _H):  # loop over findings only
            ts = np.sort(t[pos])
            shift_min = float(shift[pos].mean() / 60e9)
            t0, t1 = utc(ts[0]), utc(ts[-1])
            out.append(
                {
                    "type": "off_grid_reading",
                    "severity": self.severity,
                    "meter_id": w.ids[row],
                    "transformer_id": w.meters.transformer_id[row],
                    "starts_at": t0,
                    "ends_at": t1,
                    "summary": (
                        f"{pos.size} reading{'s' if pos.size != 1 else ''} about {abs(shift_min):.0f} min "
                        f"off the meter's usual interval grid from {short_ts(t0)} to {short_ts(t1)}"
                    ),
                    "evidence": plain(
                        {
                            "rule": "reading time within the interval more than tolerance_s "
                            "from the meter's usual offset",
                            "thresholds": params,
                            "readings": int(pos.size),
                            "interval_s": w.step / 1e9,
                            "usual_offset_s": float(usual[row] / 1e9),
                            "mean_shift_min": shift_min,
                            "window": w.meter_window(row),
                        }
                    ),
                }
            )
        return findings_frame(out)


@register(cadence="interval", order=340)
class NonNumericValue(Detector):
    """Values that were not numbers (``"err"``, ``"1,5"`` ...) in a meter's readings; they are
    read as missing, counted here and alerted so the source can be fixed.

    Parameters
    ----------
    merge_hours : float
        Non-numeric values of a meter at most this far apart are one finding [h]. Default 24.
    """

    alert_types: ClassVar[tuple[str, ...]] = ("non_numeric_value",)

    def __init__(self, merge_hours: float = 24.0) -> None:
        self.merge_hours = _check_merge(merge_hours)

    def detect_window(self, w: Window) -> pd.DataFrame:
        """One finding per burst of non-numeric values of a meter."""
        codes, t, col = w.dq.non_numeric
        params = plain(self.get_params())
        out = []
        for r, pos in _grouped(codes, t, self.merge_hours * _H):  # loop over findings only
            names = sorted({READING_FIELDS[k] for k in col[pos].tolist()})
            t0, t1 = utc(t[pos].min()), utc(t[pos].max())
            out.append(
                {
                    "type": "non_numeric_value",
                    "severity": self.severity,
                    "meter_id": w.ids[r],
                    "transformer_id": w.meters.transformer_id[r],
                    "starts_at": t0,
                    "ends_at": t1,
                    "summary": (
                        f"{pos.size} non-numeric value{'s' if pos.size != 1 else ''} in "
                        f"{', '.join(names)} from {short_ts(t0)} to {short_ts(t1)} (read as missing)"
                    ),
                    "evidence": plain(
                        {
                            "rule": "a quantity cell that is not a number",
                            "thresholds": params,
                            "values": int(pos.size),
                            "columns": names,
                        }
                    ),
                }
            )
        return findings_frame(out)
