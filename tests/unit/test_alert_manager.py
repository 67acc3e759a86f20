"""Alert manager: one open alert per fingerprint, feed lines per contracts §3, replay on restart."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from meterwatch.alerts.manager import AlertManager
from meterwatch.alerts.model import fingerprint
from meterwatch.core.schema import FINDING_COLUMNS

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def findings(*rows: dict) -> pd.DataFrame:
    base = {
        "severity": "critical",
        "meter_id": "I0001",
        "transformer_id": "TA01",
        "summary": "s",
        "evidence": {"rule": "x"},
        "ends_at": pd.NaT,
    }
    df = pd.DataFrame([{**base, **r} for r in rows])
    for c in ("starts_at", "ends_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df[list(FINDING_COLUMNS)]


def feed_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_contract_fields_and_one_open_alert_per_fingerprint(tmp_path: Path) -> None:
    feed = tmp_path / "alerts.jsonl"
    am = AlertManager(feed)
    f = findings({"type": "phase_break", "starts_at": "2026-01-05T04:00Z"})
    assert [e for e, _ in am.process(f, NOW)] == ["opened"]
    assert am.process(f, NOW) == []  # same episode again: nothing new
    later = findings({"type": "phase_break", "starts_at": "2026-01-05T06:00Z"})
    events = am.process(later, NOW)
    assert [e for e, _ in events] == ["updated"]
    assert len(am.open_alerts()) == 1 and am.open_alerts()[0].count == 2
    lines = feed_lines(feed)
    assert len(lines) == 2 and lines[0]["id"] == lines[1]["id"]
    line = lines[0]
    for key in (
        "id",
        "fingerprint",
        "type",
        "category",
        "severity",
        "meter_id",
        "transformer_id",
        "status",
        "starts_at",
        "ends_at",
        "summary",
        "evidence",
    ):
        assert key in line
    assert line["category"] == "equipment" and line["status"] == "open"
    assert line["starts_at"] == "2026-01-05T04:00:00Z" and line["ends_at"] is None
    assert line["fingerprint"] == fingerprint("phase_break", "I0001", None)


def test_auto_resolve_then_new_occurrence(tmp_path: Path) -> None:
    am = AlertManager(tmp_path / "a.jsonl", auto_resolve_categories=["equipment"])
    am.process(findings({"type": "phase_break", "starts_at": "2026-01-05T04:00Z"}), NOW)
    ended = findings(
        {"type": "phase_break", "starts_at": "2026-01-05T04:00Z", "ends_at": "2026-01-05T07:00Z"}
    )
    assert [e for e, _ in am.process(ended, NOW)] == ["resolved"]
    assert am.process(ended, NOW) == []  # the resolved episode is not reported again
    again = findings({"type": "phase_break", "starts_at": "2026-01-05T09:00Z"})
    events = am.process(again, NOW)
    assert [e for e, _ in events] == ["opened"]
    assert len(am.alerts) == 2


def test_billing_alerts_stay_open_until_handled(tmp_path: Path) -> None:
    am = AlertManager(tmp_path / "a.jsonl", auto_resolve_categories=["equipment"])
    f = findings(
        {
            "type": "register_decrease",
            "severity": "major",
            "starts_at": "2026-01-05T09:00Z",
            "ends_at": "2026-01-05T09:00Z",
        }
    )
    am.process(f, NOW)
    (alert,) = am.open_alerts()
    assert alert.status == "open" and alert.category == "billing"


def test_state_survives_restart(tmp_path: Path) -> None:
    feed = tmp_path / "a.jsonl"
    am = AlertManager(feed)
    am.process(findings({"type": "voltage_loss", "starts_at": "2026-01-05T04:00Z"}), NOW)
    again = AlertManager(feed)
    assert len(again.open_alerts()) == 1
    assert (
        again.process(findings({"type": "voltage_loss", "starts_at": "2026-01-05T04:00Z"}), NOW)
        == []
    )


def test_transformer_level_fingerprint_has_no_meter() -> None:
    assert fingerprint("outage", None, "TA01") != fingerprint("outage", None, "TA02")
    assert fingerprint("outage", None, "TA01") == fingerprint("outage", "", "TA01")


def test_unknown_type_refused(tmp_path: Path) -> None:
    am = AlertManager(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="unknown alert type"):
        am.process(findings({"type": "bogus", "starts_at": "2026-01-05T04:00Z"}), NOW)


def test_streaming_findings_only_confirm_an_open_alert(tmp_path: Path) -> None:
    am = AlertManager(tmp_path / "a.jsonl")
    first = findings({"type": "phase_break", "starts_at": "2026-01-05T04:00Z"})
    assert [e for e, _ in am.process(first, NOW, streaming=True)] == ["opened"]
    for minute in ("15", "30", "45"):
        later = findings({"type": "phase_break", "starts_at": f"2026-01-05T04:{minute}Z"})
        assert am.process(later, NOW, streaming=True) == []
    (alert,) = am.open_alerts()
    assert alert.count == 1
    # The scheduled run sees the whole episode, from its true start: still the same alert.
    assert am.process(first, NOW) == []
