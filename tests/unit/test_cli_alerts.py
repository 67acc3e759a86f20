"""`meterwatch alerts …` over a feed written by the AlertManager."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from meterwatch.alerts.manager import AlertManager
from meterwatch.cli import main
from meterwatch.core.schema import FINDING_COLUMNS

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
    return [json.loads(x) for x in res.stdout.splitlines()]  # notes go to stderr


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


# -- action time: --at, or the simulated service clock recorded next to the feed ---------------


def _alert_id(feed: Path, meter: str) -> str:
    found = listed(feed, "--meter", meter)[0]["id"]
    assert isinstance(found, str)
    return found


def _shown(feed: Path, alert_id: str) -> dict[str, object]:
    res = run("alerts", "show", alert_id, "--feed", str(feed), "--json")
    assert res.exit_code == 0, res.output
    out: dict[str, object] = json.loads(res.output)
    return out


def test_explicit_at_sets_the_action_time_and_the_sla_verdict(feed: Path) -> None:
    m1, m2 = _alert_id(feed, "M1"), _alert_id(feed, "M2")
    # opened at T0; default SLA: acknowledge within 2 h, resolve within 24 h
    res = run("alerts", "ack", m1, "--feed", str(feed), "--at", "2026-01-05T13:00:00Z")
    assert res.exit_code == 0, res.output
    assert "SLA: met" in res.output
    assert _shown(feed, m1)["acknowledged_at"] == "2026-01-05T13:00:00Z"
    res = run("alerts", "resolve", m2, "--feed", str(feed), "--at", "2026-01-06T18:00:00Z")
    assert res.exit_code == 0 and "SLA: missed" in res.output  # 30 h after opening
    assert _shown(feed, m2)["resolved_at"] == "2026-01-06T18:00:00Z"
    bad = CliRunner().invoke(main, ["alerts", "ack", m1, "--feed", str(feed), "--at", "noon"])
    assert bad.exit_code == 2 and "--at" in bad.output and "'noon'" in bad.output


def test_without_a_service_clock_actions_use_the_wall_clock(feed: Path) -> None:
    m1 = _alert_id(feed, "M1")
    before = datetime.now(UTC).replace(microsecond=0)
    res = run("alerts", "ack", m1, "--feed", str(feed))
    assert res.exit_code == 0 and "from the" not in res.stderr
    at = datetime.fromisoformat(str(_shown(feed, m1)["acknowledged_at"]).replace("Z", "+00:00"))
    assert before <= at <= datetime.now(UTC)


def test_running_simulated_service_clock_is_the_default(feed: Path) -> None:
    from meterwatch.alerts.manager import default_state_dir, record_clock

    m1 = _alert_id(feed, "M1")
    wall = datetime.now(UTC) - timedelta(seconds=2)
    # 30 min of service time after T0, recorded 2 s of wall time ago, running 60x
    record_clock(
        default_state_dir(feed),
        T0 + timedelta(minutes=30),
        speed=60.0,
        simulated=True,
        running=True,
        wall_now=wall,
    )
    res = run("alerts", "ack", m1, "--feed", str(feed))
    assert res.exit_code == 0, res.output
    assert "SLA: met" in res.output  # the wall clock (months later) would say missed
    assert "running service's simulated clock (60x" in res.stderr
    at = datetime.fromisoformat(str(_shown(feed, m1)["acknowledged_at"]).replace("Z", "+00:00"))
    elapsed = (datetime.now(UTC) - wall).total_seconds()
    # 30 min + (2 s and the command's own run time) x 60
    assert T0 + timedelta(minutes=32) <= at <= T0 + timedelta(minutes=30, seconds=elapsed * 60 + 1)


@pytest.mark.parametrize(
    ("running", "wall_ago_s", "why"), [(False, 3600.0, "stopped"), (True, 600.0, "silent for")]
)
def test_stopped_or_silent_service_clock_stands_still(
    feed: Path, running: bool, wall_ago_s: float, why: str
) -> None:
    from meterwatch.alerts.manager import default_state_dir, record_clock

    m1 = _alert_id(feed, "M1")
    record_clock(
        default_state_dir(feed),
        T0 + timedelta(hours=3),
        speed=2400.0,
        simulated=True,
        running=running,
        wall_now=datetime.now(UTC) - timedelta(seconds=wall_ago_s),
    )
    res = run("alerts", "resolve", m1, "--feed", str(feed))
    assert res.exit_code == 0, res.output
    assert _shown(feed, m1)["resolved_at"] == "2026-01-05T15:00:00Z"
    assert why in res.stderr and "--at overrides" in res.stderr
    # report judges open deadlines at the same default instant
    rep = run("alerts", "report", "--feed", str(feed), "--json")
    assert rep.exit_code == 0 and why in rep.stderr
    json.loads(rep.stdout)  # the JSON on stdout is not mixed with the note


def test_real_time_service_clock_means_wall_clock(feed: Path) -> None:
    from meterwatch.alerts.manager import default_state_dir, record_clock

    m1 = _alert_id(feed, "M1")
    record_clock(
        default_state_dir(feed),
        T0,
        speed=1.0,
        simulated=False,
        running=False,
        wall_now=datetime.now(UTC) - timedelta(hours=1),
    )
    before = datetime.now(UTC).replace(microsecond=0)
    assert run("alerts", "ack", m1, "--feed", str(feed)).exit_code == 0
    at = datetime.fromisoformat(str(_shown(feed, m1)["acknowledged_at"]).replace("Z", "+00:00"))
    assert at >= before


def test_since_counts_back_from_the_service_clock_like_ack(feed: Path) -> None:
    """``--since 2h`` on a simulated feed is 2 h of service time, not of the wall clock."""
    from meterwatch.alerts.manager import default_state_dir, record_clock

    # every alert of the feed changed at T0; the service stopped 3 h of service time later
    record_clock(
        default_state_dir(feed),
        T0 + timedelta(hours=3),
        speed=2400.0,
        simulated=True,
        running=False,
        wall_now=datetime.now(UTC) - timedelta(minutes=5),
    )
    assert listed(feed, "--since", "2h") == []  # since T0 + 1 h
    assert len(listed(feed, "--since", "4h")) == 3  # since T0 - 1 h
    res = run("alerts", "list", "--feed", str(feed), "--since", "2h")
    assert "since 2026-01-05T13:00:00Z (2h before 2026-01-05T15:00:00Z" in res.stderr
    rep = run("alerts", "report", "--feed", str(feed), "--json", "--since", "4h")
    assert rep.exit_code == 0, rep.output
    assert sum(r["alerts"] for r in json.loads(rep.stdout)) == 3
    # an ISO instant is taken as given; a bad value names the option
    assert len(listed(feed, "--since", "2026-01-05T11:59:00Z")) == 3
    bad = CliRunner().invoke(main, ["alerts", "list", "--feed", str(feed), "--since", "soon"])
    assert bad.exit_code == 2 and "--since" in bad.output and "'soon'" in bad.output
