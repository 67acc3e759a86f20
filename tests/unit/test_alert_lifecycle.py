"""Alert lifecycle: transitions (table), flap hold, reopen/verify, restart persistence,
inhibition and silences, SLA escalation timing and the on-time report."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from meterwatch.alerts.grouping import group_by_area
from meterwatch.alerts.manager import AlertManager
from meterwatch.alerts.model import Alert
from meterwatch.alerts.report import on_time_report
from meterwatch.alerts.sla import SlaPolicy, SlaRule
from meterwatch.config import AlertsConfig
from meterwatch.core.errors import AlertError, AlertNotFound, AlertStateError, MeterWatchError
from meterwatch.core.schema import FINDING_COLUMNS

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)
H = timedelta(hours=1)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def findings(*rows: dict[str, Any]) -> pd.DataFrame:
    base = {
        "type": "voltage_loss",
        "severity": "critical",
        "meter_id": "M1",
        "transformer_id": "TA01",
        "summary": "s",
        "evidence": {"rule": "x"},
        "ends_at": None,
    }
    df = pd.DataFrame([{**base, **r} for r in rows])
    for c in ("starts_at", "ends_at"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df[list(FINDING_COLUMNS)]


def episode(start_h: float, end_h: float | None = None, **kw: Any) -> pd.DataFrame:
    return findings(
        {"starts_at": at(start_h), "ends_at": None if end_h is None else at(end_h), **kw}
    )


def manager(tmp_path: Path, **kw: Any) -> tuple[AlertManager, list[tuple[str, Alert]]]:
    events: list[tuple[str, Alert]] = []
    kw.setdefault("verify_after_intervals", 2)
    kw.setdefault("flap_hold_s", 2 * 3600.0)
    # SLA deadlines far away unless a test is about them
    kw.setdefault("sla", SlaPolicy(acknowledge=1e6, resolve=1e6))
    am = AlertManager(
        tmp_path / "alerts.jsonl",
        listeners=[lambda e, a: events.append((e, a))],
        **kw,
    )
    return am, events


# Each step: ("find", start_h, end_h, now_h) | ("tick", now_h) | ("ack", now_h) | ("resolve", now_h)
# followed by the listener events it must produce.
LIFECYCLE = {
    "ack then hand resolve then verified after 2 clean runs": [
        (("find", 0, None, 1), ["opened"]),
        (("ack", 1.5), ["acknowledged"]),
        (("resolve", 2), ["resolved"]),
        (("tick", 2), []),  # the run in which it was resolved does not count as clean
        (("tick", 3), []),
        (("tick", 4), ["verified"]),
        (("tick", 5), []),
    ],
    "auto resolve after the flap hold, recurrence before verification re-opens": [
        (("find", 0, None, 1), ["opened"]),
        (("find", 0, 2, 3), []),  # cleared at 2 h: held open (2 h hold)
        (("tick", 3), []),
        (("tick", 4), ["resolved"]),
        (("find", 5, None, 5), ["reopened"]),
        (("tick", 6), []),
        (("tick", 7), []),  # the condition is present, not a clean run
    ],
    "flap within the hold keeps the same alert open": [
        (("find", 0, None, 1), ["opened"]),
        (("find", 0, 2, 2.5), []),
        (("tick", 2.5), []),
        (("find", 3, None, 3.5), ["updated"]),  # back 1 h after clearing
        (("tick", 4.5), []),  # 2.5 h after the first clear: not resolved, it came back
        (("tick", 10), []),
    ],
    "after verification a new occurrence is a new alert": [
        (("find", 0, 1, 5), ["opened"]),  # already over (older than the hold): opened resolved
        (("tick", 6), []),
        (("tick", 7), []),
        (("tick", 8), ["verified"]),
        (("find", 9, None, 9), ["opened"]),
    ],
    "a reported episode is not re-reported after resolution": [
        (("find", 0, None, 1), ["opened"]),
        (("resolve", 2), ["resolved"]),
        (("find", 0, None, 3), []),  # the detector still sees the same episode
        (("tick", 3), []),
        (("find", 0, None, 4), []),
        (("tick", 4), []),  # still present: not a clean run
        (("tick", 5), []),  # clean 1
        (("tick", 6), ["verified"]),  # clean 2
    ],
}


@pytest.mark.parametrize("name", list(LIFECYCLE))
def test_lifecycle_table(tmp_path: Path, name: str) -> None:
    am, events = manager(tmp_path)
    ids = set()
    for step, expected in LIFECYCLE[name]:
        events.clear()
        kind = step[0]
        if kind == "find":
            _, start, end, now = step
            am.process(episode(start, end), at(now))
        elif kind == "tick":
            am.tick(at(step[1]))
        elif kind == "ack":
            am.acknowledge(am.list()[-1].id, by="li", note="on my way", now=at(step[1]))
        elif kind == "resolve":
            am.resolve(am.list()[-1].id, by="li", note="fixed", now=at(step[1]))
        assert [e for e, _ in events] == expected, (name, step)
        ids.update(a.id for _, a in events)
    if name == "after verification a new occurrence is a new alert":
        assert len(ids) == 2 and len(am.alerts) == 2
    else:
        assert len(am.alerts) == 1, "one alert per fingerprint for the whole story"


def test_lifecycle_fields(tmp_path: Path) -> None:
    am, _ = manager(tmp_path)
    am.process(episode(0), at(1))
    (a,) = am.list()
    am.acknowledge(a.id, by="li", note="crew sent", now=at(1.5))
    assert (a.status, a.acknowledged_by, a.ack_note, a.acknowledged_at) == (
        "acknowledged",
        "li",
        "crew sent",
        at(1.5),
    )
    am.resolve(a.id, by="wang", note="fuse replaced", now=at(3))
    assert (a.status, a.resolved_by, a.resolve_note, a.resolved_at) == (
        "resolved",
        "wang",
        "fuse replaced",
        at(3),
    )
    assert am.list(status="resolved") == [a] and am.list(status="active") == []
    am.process(episode(4), at(4))
    assert a.status == "open" and a.reopened == 1 and a.resolved_by is None and a.count == 2


def test_auto_resolve_records_who_and_when(tmp_path: Path) -> None:
    am, events = manager(tmp_path, flap_hold_s=0)
    am.process(episode(0), at(1))
    am.process(episode(0, 2), at(2.5))
    ((event, a),) = events[1:]
    assert event == "resolved" and a.resolved_by == "auto" and a.ends_at == at(2)


@pytest.mark.parametrize(
    ("action", "setup", "error", "match"),
    [
        ("resolve", "none", AlertNotFound, "no alert with id 'nope'"),
        ("ack", "none", AlertNotFound, "no alert with id 'nope'"),
        ("ack", "resolved", AlertStateError, "cannot acknowledge alert .* already resolved"),
        ("ack", "acknowledged", AlertStateError, "already acknowledged"),
        ("resolve", "resolved", AlertStateError, "cannot resolve alert .* already resolved"),
    ],
)
def test_transition_errors(
    tmp_path: Path, action: str, setup: str, error: type[Exception], match: str
) -> None:
    am, _ = manager(tmp_path)
    am.process(episode(0), at(1))
    aid = am.list()[0].id
    if setup == "resolved":
        am.resolve(aid, by="li", now=at(2))
    elif setup == "acknowledged":
        am.acknowledge(aid, by="li", now=at(2))
    target = "nope" if setup == "none" else aid
    fn = am.resolve if action == "resolve" else am.acknowledge
    with pytest.raises(error, match=match) as info:
        fn(target, by="li", now=at(3))
    assert isinstance(info.value, MeterWatchError)
    with pytest.raises(AlertNotFound):
        am.get("nope")


def test_restart_keeps_ack_silence_sla_and_verification(tmp_path: Path) -> None:
    am, _ = manager(tmp_path, sla=SlaPolicy())
    am.process(episode(0), at(0))
    am.process(episode(0, meter_id="M2"), at(0))
    a1, a2 = sorted(am.list(), key=lambda a: a.meter_id or "")
    am.acknowledge(a1.id, by="li", note="n1", now=at(0.5))
    s = am.silence(
        {"meter_id": "M3"}, starts_at=at(0), ends_at=at(10), author="li", comment="rewiring"
    )
    assert [e for e, _ in am.tick(at(1.7))] == ["escalated"]  # a2: 85 % of 2 h
    am.resolve(a1.id, by="li", now=at(2))
    am.tick(at(2.5))  # a1: first clean run... is the run it was resolved in
    am.tick(at(3))  # a1: clean run 1 (and a2: acknowledge missed)
    am.close()

    again, events = manager(tmp_path, sla=SlaPolicy())
    b1, b2 = again.get(a1.id), again.get(a2.id)
    assert (b1.status, b1.acknowledged_by, b1.ack_note) == ("resolved", "li", "n1")
    assert b1.sla is not None and b1.sla["acknowledge"] == "met" and b1.sla["resolve"] == "met"
    assert b2.sla is not None
    assert b2.sla["escalations"] == ["acknowledge:approaching", "acknowledge:missed"]
    assert b2.sla["acknowledge"] == "missed"
    assert [x.id for x in again.active_silences(at(5))] == [s.id]
    # The silence applies to a new alert after the restart.
    again.process(episode(4, meter_id="M3"), at(4))
    new = again.list(meter_id="M3")[0]
    assert new.quiet == {"reason": "silenced", "silence_id": s.id, "until": "2026-01-05T22:00:00Z"}
    # The verification counter continued (1 + 1 = 2); a2's escalations are not raised again.
    events.clear()
    again.tick(at(4.5))
    assert ("verified", b1) in [(e, again.get(a.id)) for e, a in events]
    assert [e for e, a in events if a.id == a2.id] == []


def test_outage_inhibits_area_meter_alerts(tmp_path: Path) -> None:
    am, events = manager(tmp_path)
    am.process(findings({"type": "outage", "meter_id": None, "starts_at": at(0)}), at(0))
    outage = am.list(type="outage")[0]
    am.process(
        findings(
            {"type": "voltage_loss", "meter_id": "M1", "starts_at": at(0)},
            {"type": "meter_offline", "meter_id": "M2", "starts_at": at(0)},
            {
                "type": "voltage_loss",
                "meter_id": "M9",
                "transformer_id": "TA02",
                "starts_at": at(0),
            },
            {"type": "phase_break", "meter_id": "M1", "starts_at": at(0)},
        ),
        at(0.5),
    )
    quiet = {a.meter_id + "/" + a.type: a.quiet for a in am.list() if a.meter_id}
    assert quiet["M1/voltage_loss"] == {"reason": "inhibited", "inhibited_by": outage.id}
    assert quiet["M2/meter_offline"] == {"reason": "inhibited", "inhibited_by": outage.id}
    assert quiet["M9/voltage_loss"] is None and quiet["M1/phase_break"] is None
    # The listener event itself carries the reason, so delivery can skip it.
    opened = {a.meter_id: a for e, a in events if e == "opened" and a.type == "voltage_loss"}
    assert opened["M1"].inhibited_by == outage.id
    # The outage ends: the meter alerts are no longer inhibited and are announced.
    am.resolve(outage.id, by="li", now=at(1))
    events.clear()
    am.tick(at(1))
    released = sorted(a.meter_id or "" for e, a in events if e == "updated")
    assert released == ["M1", "M2"]
    assert all(a.quiet is None for a in am.list(status="open"))
    # Grouping for notifications: by transformer area, quiet alerts left out.
    groups = group_by_area(am.list(status="open"))
    assert sorted((g.key, g.meters) for g in groups) == [
        ("area:TA01", ["M1", "M2"]),
        ("area:TA02", ["M9"]),
    ]


def test_silence_window_and_matchers(tmp_path: Path) -> None:
    am, events = manager(tmp_path)
    am.process(episode(0), at(0))
    am.process(episode(0, meter_id="M2", transformer_id="TA02"), at(0))
    s = am.silence(
        {"type": "voltage_loss", "transformer_id": "TA01"},
        starts_at=at(1),
        ends_at=at(3),
        author="li",
        comment="planned work",
        now=at(1),
    )
    quiet = {a.meter_id: a.quiet for a in am.list()}
    assert quiet["M1"] is not None and quiet["M1"]["silence_id"] == s.id
    assert quiet["M2"] is None
    assert [e for e, _ in am.tick(at(2))] == []
    events.clear()
    am.tick(at(3))  # the silence has ended
    assert [(e, a.meter_id, a.quiet) for e, a in events] == [("updated", "M1", None)]
    line = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[-1])
    assert line["meter_id"] == "M1" and line["quiet"] is None
    with pytest.raises(AlertError, match="label.*colour not allowed"):
        am.silence({"colour": "red"}, starts_at=at(0), ends_at=at(1), author="li", comment="c")
    with pytest.raises(AlertError, match="not after"):
        am.silence({"type": "outage"}, starts_at=at(1), ends_at=at(1), author="li", comment="c")
    with pytest.raises(AlertError, match="comment"):
        am.silence({"type": "outage"}, starts_at=at(0), ends_at=at(1), author="li", comment=" ")


def test_sla_escalation_timing(tmp_path: Path) -> None:
    policy = SlaPolicy(
        overrides=(
            SlaRule(severity="critical", acknowledge=3600.0),
            SlaRule(severity="critical", customer_class="industrial", acknowledge=1800.0),
        ),
        escalate_at_fraction=0.8,
    )
    am, events = manager(tmp_path, sla=policy, meters={"M1": "industrial", "M2": "residential"})
    am.process(episode(0, meter_id="M1"), at(0))
    am.process(episode(0, meter_id="M2"), at(0))
    am.process(episode(0, meter_id="M3", severity="minor"), at(0))
    due = {a.meter_id: a.sla["acknowledge_due"] for a in am.list() if a.sla}
    assert due == {
        "M1": "2026-01-05T12:30:00Z",  # critical + industrial: 30 min
        "M2": "2026-01-05T13:00:00Z",  # critical: 1 h
        "M3": "2026-01-05T14:00:00Z",  # default: 2 h
    }

    def escalations(minutes: float) -> list[tuple[str | None, list[str]]]:
        events.clear()
        am.tick(T0 + timedelta(minutes=minutes))
        return [(a.meter_id, a.sla["last_escalation"]["escalations"]) for e, a in events if a.sla]

    assert escalations(23) == []
    assert escalations(24) == [("M1", ["acknowledge:approaching"])]  # 80 % of 30 min
    assert escalations(25) == []  # once per deadline
    assert escalations(30) == [("M1", ["acknowledge:missed"])]
    assert escalations(59) == [("M2", ["acknowledge:approaching"])]
    assert escalations(90) == [("M2", ["acknowledge:missed"])]
    assert escalations(96) == [("M3", ["acknowledge:approaching"])]  # 80 % of 2 h
    m3 = am.list(meter_id="M3")[0]
    am.acknowledge(m3.id, by="li", now=T0 + timedelta(minutes=100))
    assert m3.sla is not None and m3.sla["acknowledge"] == "met"
    assert escalations(120) == []  # acknowledged: no acknowledge escalation any more
    # resolve deadline 24 h: approaching at 19.2 h for all three, missed at 24 h
    assert sorted(m for m, _ in escalations(19.2 * 60)) == ["M1", "M2", "M3"]
    assert {tuple(x) for _, x in escalations(24 * 60)} == {("resolve:missed",)}


@pytest.mark.parametrize(
    ("alerts", "match"),
    [
        ({"sla": {"overrides": [{"resolve": "4h"}]}}, "needs severity and/or customer_class"),
        ({"sla": {"overrides": [{"severity": "major"}]}}, "needs acknowledge and/or resolve"),
        ({"sla": {"acknowledge": "soon"}}, "not a duration"),
        ({"escalate_at_fraction": 1.5}, "less than 1"),
        ({"verify_after_intervals": -1}, "greater than or equal to 0"),
        ({"audit": {"checkpoint_every": 0}}, "greater than or equal to 1"),
    ],
)
def test_lifecycle_config_validated(alerts: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AlertsConfig.model_validate(alerts)


def _alert(tid: str, atype: str, ack: str | None, res: str | None, res_due_h: float) -> Alert:
    a = Alert(
        type=atype,
        severity="major",
        meter_id="M",
        transformer_id=tid,
        starts_at=T0,
        summary="s",
        evidence={},
    )
    a.sla = {
        "opened_at": "2026-01-05T12:00:00Z",
        "acknowledge_due": "2026-01-05T14:00:00Z",
        "resolve_due": (T0 + timedelta(hours=res_due_h)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "acknowledge": ack,
        "resolve": res,
        "escalations": [],
    }
    return a


def test_on_time_report_numbers() -> None:
    alerts = [
        _alert("TA01", "voltage_loss", "met", "met", 24),
        _alert("TA01", "voltage_loss", "missed", None, 24),  # resolve due passed at report time
        _alert("TA01", "voltage_loss", "met", "missed", 24),
        _alert("TA02", "phase_break", "met", None, 48),  # resolve still pending
    ]
    df = on_time_report(alerts, T0 + timedelta(hours=30)).set_index(["transformer_id", "type"])
    r1 = df.loc[("TA01", "voltage_loss")]
    assert (r1["alerts"], r1["ack_decided"], r1["ack_on_time"]) == (3, 3, 2)
    assert r1["ack_rate"] == pytest.approx(2 / 3)
    assert (r1["resolve_decided"], r1["resolve_on_time"], r1["pending"]) == (3, 1, 0)
    assert r1["resolve_rate"] == pytest.approx(1 / 3)
    r2 = df.loc[("TA02", "phase_break")]
    assert (r2["ack_rate"], r2["resolve_decided"], r2["pending"]) == (1.0, 0, 1)
    assert math.isnan(r2["resolve_rate"])


def test_from_config_uses_lifecycle_settings(tmp_path: Path) -> None:
    cfg = AlertsConfig.model_validate(
        {
            "feed": str(tmp_path / "f.jsonl"),
            "verify_after_intervals": 1,
            "flap_hold": "30m",
            "sla": {
                "acknowledge": "1h",
                "overrides": [{"customer_class": "industrial", "resolve": "4h"}],
            },
        }
    )
    am = AlertManager.from_config(
        cfg, meters=pd.DataFrame({"meter_id": ["M1"], "customer_class": ["industrial"]})
    )
    assert am.state_dir == tmp_path / "f-state" and am.flap_hold_s == 1800.0
    am.process(episode(0), at(0))
    sla = am.list()[0].sla
    assert sla is not None
    assert (sla["acknowledge_due"], sla["resolve_due"]) == (
        "2026-01-05T13:00:00Z",
        "2026-01-05T16:00:00Z",
    )
    assert (am.state_dir / "audit.jsonl").exists()


def test_late_run_raises_only_missed(tmp_path: Path) -> None:
    am, events = manager(tmp_path, sla=SlaPolicy())
    am.process(episode(0), at(0))
    am.tick(at(3))  # first run after the 2 h acknowledge deadline
    ((event, a),) = events[1:]
    assert event == "escalated" and a.sla is not None
    assert a.sla["escalations"] == ["acknowledge:missed"] and a.sla["acknowledge"] == "missed"
    am.acknowledge(a.id, by="li", now=at(3.5))
    assert a.sla["acknowledge"] == "missed"  # late stays late


def test_ack_from_another_process_is_not_overwritten(tmp_path: Path) -> None:
    service, _ = manager(tmp_path)
    service.process(episode(0), at(0))
    aid = service.list()[0].id
    cli, _ = manager(tmp_path)  # e.g. `meterwatch alerts ack` while the service runs
    cli.acknowledge(aid, by="li", note="seen", now=at(0.5))
    service.process(episode(1), at(1))  # a new episode updates the alert in the service
    line = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[-1])
    assert (line["status"], line["acknowledged_by"], line["count"]) == ("acknowledged", "li", 2)
    assert service.get(aid).status == "acknowledged"
    with pytest.raises(AlertStateError, match="already acknowledged"):
        service.acknowledge(aid, by="wang", now=at(2))


def test_resolution_keeps_the_quiet_state_it_was_notified_with(tmp_path: Path) -> None:
    am, events = manager(tmp_path, flap_hold_s=0)
    am.process(findings({"type": "outage", "meter_id": None, "starts_at": at(0)}), at(0))
    am.process(episode(0, meter_id="M1"), at(0))  # inhibited: never notified
    am.process(episode(0, meter_id="M1", type="phase_break"), at(0))  # notified
    outage = am.list(type="outage")[0]
    am.resolve(outage.id, by="li", now=at(1))
    events.clear()
    am.process(
        findings(
            {"meter_id": "M1", "starts_at": at(0), "ends_at": at(1.5)},
            {"meter_id": "M1", "type": "phase_break", "starts_at": at(0), "ends_at": at(1.5)},
        ),
        at(2),
    )
    resolved = {a.type: a.quiet for e, a in events if e == "resolved"}
    assert resolved == {
        "voltage_loss": {"reason": "inhibited", "inhibited_by": outage.id},
        "phase_break": None,
    }
