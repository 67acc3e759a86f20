"""`meterwatch alerts …` over a feed written by the AlertManager."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from alerts.manager import AlertManager
from meterwatch.cli import main
from meterwatch.schema import FINDING_COLUMNS

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)


def finding(atype: str, meter: str | None, area: str, start: str) -> dict[str, object]:
    return {
        "type": atype,
        "severity": "critical",
        "meter_id": meter,
        "transformer_id": area,
        "starts_at": pd.Timestamp(start),
        "ends_at": pd.NaT,
        "summary": f"{atype} on {meter or area}",
        "evidence": {"rule": atype, "observed_v": 12.5},
    }


@pytest.fixture
def feed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MW_AUDIT_KEY", "k")
    monkeypatch.setenv("USER", "zhang")
    monkeypatch.chdir(tmp_path)  # no config.yaml here: defaults, --feed wins
    path = tmp_path / "var" / "alerts.jsonl"
    am = AlertManager(path)
    rows = [
        finding("voltage_loss", "M1", "TA01", "2026-01-05T10:00Z"),
        finding("phase_break", "M2", "TA01", "2026-01-05T10:30Z"),
        finding("register_decrease", "M3", "TA02", "2026-01-05T11:00Z"),
    ]
    am.process(pd.DataFrame(rows)[list(FINDING_COLUMNS)], T0)
    am.close()
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def listed(feed: Path, *filters: str) -> list[dict[str, object]]:
    res = run("alerts", "list", "--feed", str(feed), "--json", *filters)
    assert res.exit_code == 0, res.output
    return [json.loads(x) for x in res.output.splitlines()]


def test_list_filters(feed: Path) -> None:
    assert [a["type"] for a in listed(feed)] == ["voltage_loss", "phase_break", "register_decrease"]
    assert [a["meter_id"] for a in listed(feed, "--area", "TA01")] == ["M1", "M2"]
    assert [a["meter_id"] for a in listed(feed, "--type", "phase_break")] == ["M2"]
    assert [a["meter_id"] for a in listed(feed, "--meter", "M3")] == ["M3"]
    assert listed(feed, "--status", "acknowledged") == []
    assert len(listed(feed, "--since", "2026-01-05T11:59:00Z")) == 3
    assert listed(feed, "--since", "2026-01-05T12:01:00Z") == []
    table = run("alerts", "list", "--feed", str(feed))
    assert table.exit_code == 0 and "3 alert(s)" in table.output and "voltage_loss" in table.output


def test_ack_resolve_show(feed: Path) -> None:
    m1 = listed(feed, "--meter", "M1")[0]["id"]
    assert isinstance(m1, str)
    res = run("alerts", "ack", m1[:6], "--feed", str(feed), "--note", "crew sent")
    assert res.exit_code == 0, res.output
    assert f"acknowledged {m1}" in res.output and "by zhang" in res.output
    shown = json.loads(run("alerts", "show", m1, "--feed", str(feed), "--json").output)
    assert (shown["status"], shown["acknowledged_by"], shown["ack_note"]) == (
        "acknowledged",
        "zhang",
        "crew sent",
    )
    assert shown["evidence"] == {"rule": "voltage_loss", "observed_v": 12.5}
    again = run("alerts", "ack", m1, "--feed", str(feed))
    assert again.exit_code == 2 and "already acknowledged" in again.output
    res = run("alerts", "resolve", m1, "--feed", str(feed), "--by", "wang", "--note", "fuse")
    assert res.exit_code == 0 and "resolved" in res.output
    assert [a["meter_id"] for a in listed(feed, "--status", "resolved")] == ["M1"]
    text = run("alerts", "show", m1, "--feed", str(feed))
    assert "resolved_by" in text.output and "wang" in text.output
    # a new process replaying the feed sees the hand actions
    assert AlertManager(feed).get(m1).resolved_by == "wang"


def test_unknown_id_is_a_clear_error(feed: Path) -> None:
    res = run("alerts", "resolve", "doesnotexist", "--feed", str(feed))
    assert res.exit_code == 2
    assert "no alert with id 'doesnotexist'" in res.output


def test_silence_makes_alerts_quiet(feed: Path) -> None:
    res = run(
        "alerts",
        "silence",
        "transformer_id=TA01",
        "type=phase_break",
        "--duration",
        "3h",
        "--comment",
        "line work",
        "--feed",
        str(feed),
    )
    assert res.exit_code == 0, res.output
    quiet = {a["meter_id"]: a["quiet"] for a in listed(feed)}
    assert quiet["M1"] is None and quiet["M3"] is None
    assert isinstance(quiet["M2"], dict) and quiet["M2"]["reason"] == "silenced"
    sil = json.loads((feed.parent / "alerts-state" / "silences.jsonl").read_text())
    assert sil["author"] == "zhang" and sil["comment"] == "line work"
    assert sil["matchers"] == {"transformer_id": "TA01", "type": "phase_break"}
    bad = run("alerts", "silence", "colour=red", "--comment", "x", "--feed", str(feed))
    assert bad.exit_code == 2 and "colour" in bad.output


def test_report_json_and_table(feed: Path) -> None:
    # acknowledge M3 by hand before its deadline (deadlines are 2 h after T0 for acknowledge,
    # the CLI uses wall-clock now, so drive the manager directly for an on-time step)
    am = AlertManager(feed)
    m3 = am.list(meter_id="M3")[0]
    am.acknowledge(m3.id, by="li", now=T0 + timedelta(minutes=30))
    am.close()
    res = run("alerts", "report", "--feed", str(feed), "--json")
    assert res.exit_code == 0, res.output
    rows = {(r["transformer_id"], r["type"]): r for r in json.loads(res.output)}
    assert set(rows) == {
        ("TA01", "voltage_loss"),
        ("TA01", "phase_break"),
        ("TA02", "register_decrease"),
    }
    r3 = rows[("TA02", "register_decrease")]
    assert (r3["ack_decided"], r3["ack_on_time"], r3["ack_rate"]) == (1, 1, 1.0)
    # wall-clock now is past every 2026-01-05 deadline: the others missed theirs
    r1 = rows[("TA01", "voltage_loss")]
    assert (r1["ack_on_time"], r1["ack_rate"], r1["resolve_rate"]) == (0, 0.0, 0.0)
    # judged at T0 + 1 h, the open alerts have missed nothing yet
    early = run("alerts", "report", "--feed", str(feed), "--json", "--at", "2026-01-05T13:00:00Z")
    rows = {(r["transformer_id"], r["type"]): r for r in json.loads(early.output)}
    r1 = rows[("TA01", "voltage_loss")]
    assert (r1["ack_decided"], r1["ack_rate"], r1["pending"]) == (0, None, 1)
    table = run("alerts", "report", "--feed", str(feed), "--area", "TA02")
    assert table.exit_code == 0 and "register_decrease" in table.output
    assert "voltage_loss" not in table.output and "100%" in table.output


def test_feed_from_config(tmp_path: Path, feed: Path) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"simulator:\n  enabled: true\nalerts:\n  feed: {feed}\n")
    res = run("alerts", "list", "--config", str(cfg), "--json")
    assert res.exit_code == 0, res.output
    assert len(res.output.splitlines()) == 3
    missing = run("alerts", "list", "--config", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "nope.yaml" in missing.output
