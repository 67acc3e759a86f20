"""Audit log: the hash chain and signed checkpoints detect each kind of tampering."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from meterwatch.alerts.audit import AuditLog, canonical, entry_hash, load_key, verify
from meterwatch.alerts.manager import AlertManager
from meterwatch.cli import main
from meterwatch.core.errors import AuditError
from meterwatch.core.schema import FINDING_COLUMNS

KEY = b"test-key-not-secret"


def build(path: Path, n: int = 12, every: int = 5) -> AuditLog:
    log = AuditLog(path, KEY, checkpoint_every=every)
    for i in range(n):
        log.append("vee.estimate", {"meter_id": f"M{i % 3}", "value": i * 1.5, "note": "ü"})
    log.close()
    return log


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def rehash_from(entries: list[dict], start: int) -> None:
    """What a careful forger does: recompute every hash after the change."""
    prev = entries[start - 1]["hash"] if start else "0" * 64
    for e in entries[start:]:
        e["prev_hash"] = prev
        e["hash"] = entry_hash(e)
        prev = e["hash"]


def test_clean_log_verifies_with_checkpoints(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    build(p)
    entries = [json.loads(x) for x in lines(p)]
    # 12 entries + a checkpoint after every 5 + one at close
    assert [e["event"] for e in entries].count("checkpoint") == 3
    assert [e["seq"] for e in entries] == list(range(1, 16))
    first = entries[0]
    assert first["prev_hash"] == "0" * 64 and first["hash"] == entry_hash(first)
    assert lines(p)[0] == canonical(first) + "\n"  # canonical JSON on disk
    res = verify(p, KEY)
    assert res.ok and res.entries == 15 and res.checkpoints == 3 and res.unverified_tail == 0


def _modify(ls: list[str]) -> list[str]:
    e = json.loads(ls[6])
    e["payload"]["value"] = 999.0
    ls[6] = canonical(e) + "\n"
    return ls


def _modify_and_rehash(ls: list[str]) -> list[str]:
    entries = [json.loads(x) for x in ls]
    entries[6]["payload"]["value"] = 999.0
    rehash_from(entries, 6)
    return [canonical(e) + "\n" for e in entries]


def _insert(ls: list[str]) -> list[str]:
    forged = json.loads(ls[3])
    forged["payload"] = {"meter_id": "M9", "value": 0}
    return ls[:4] + [canonical(forged) + "\n"] + ls[4:]


def _insert_renumbered(ls: list[str]) -> list[str]:
    entries = [json.loads(x) for x in ls]
    forged = dict(entries[3], payload={"meter_id": "M9", "value": 0})
    entries.insert(4, forged)
    for i, e in enumerate(entries, 1):
        e["seq"] = i
    rehash_from(entries, 4)
    return [canonical(e) + "\n" for e in entries]


def _reorder(ls: list[str]) -> list[str]:
    ls[2], ls[3] = ls[3], ls[2]
    return ls


def _delete(ls: list[str]) -> list[str]:
    return ls[:7] + ls[8:]


def _delete_renumbered(ls: list[str]) -> list[str]:
    entries = [json.loads(x) for i, x in enumerate(ls) if i != 7]
    for i, e in enumerate(entries, 1):
        e["seq"] = i
    rehash_from(entries, 7)
    return [canonical(e) + "\n" for e in entries]


TAMPER: dict[str, tuple[Callable[[list[str]], list[str]], int, str]] = {
    "modified": (_modify, 7, "modified"),
    "modified and chain recomputed": (_modify_and_rehash, 7, "checkpoint signature"),
    "inserted": (_insert, 4, "seq 4 where 5 was expected"),
    "inserted, renumbered and rehashed": (_insert_renumbered, 1, "checkpoint signature"),
    "reordered": (_reorder, 3, "seq 4 where 3 was expected"),
    "deleted": (_delete, 8, "seq 9 where 8 was expected"),
    "deleted, renumbered and rehashed": (_delete_renumbered, 7, "checkpoint signature"),
}


@pytest.mark.parametrize("kind", list(TAMPER))
def test_each_tamper_kind_is_detected(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "audit.jsonl"
    build(p)
    tamper, first_bad, message = TAMPER[kind]
    p.write_text("".join(tamper(lines(p))), encoding="utf-8")
    res = verify(p, KEY)
    assert not res.ok
    assert res.first_bad_seq == first_bad, res.problems
    assert message in res.problems[0][1]


def test_truncated_tail_is_reported_unverified(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p, KEY, checkpoint_every=5)
    for i in range(8):
        log.append("alert.opened", {"i": i})
    # seq 6 is the checkpoint over 1..5; 7, 8, 9 follow without a signature
    res = verify(p, KEY)
    assert res.ok and res.last_checkpoint_seq == 6 and res.unverified_tail == 3
    p.write_text("".join(lines(p)[:-2]), encoding="utf-8")  # drop 8 and 9
    res = verify(p, KEY)
    assert res.ok and res.unverified_tail == 1  # cannot be told apart: reported, not hidden


def test_wrong_key_fails_the_checkpoint(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    build(p)
    res = verify(p, b"another key")
    assert not res.ok and "checkpoint signature" in res.problems[0][1]


def test_two_writers_share_one_chain(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    a, b = AuditLog(p, KEY, checkpoint_every=4), AuditLog(p, KEY, checkpoint_every=4)
    for i in range(6):
        (a if i % 2 else b).append("x", {"i": i})
    a.close()
    b.close()  # nothing new since a's checkpoint: no second checkpoint
    res = verify(p, KEY)
    assert res.ok and res.unverified_tail == 0
    payloads = [json.loads(x)["payload"].get("i") for x in lines(p)]
    assert [x for x in payloads if x is not None] == list(range(6))


def test_append_refuses_reserved_event_and_non_json(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", KEY)
    with pytest.raises(AuditError, match="reserved"):
        log.append("checkpoint", {})
    with pytest.raises(AuditError, match="not JSON"):
        log.append("x", {"when": datetime.now(UTC)})


def test_generated_key_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MW_AUDIT_KEY", raising=False)
    key = load_key("MW_AUDIT_KEY", tmp_path / "state")
    mode = stat.S_IMODE(os.stat(tmp_path / "state" / "audit.key").st_mode)
    assert mode == 0o600 and len(key) == 64
    assert load_key("MW_AUDIT_KEY", tmp_path / "state") == key
    monkeypatch.setenv("MW_AUDIT_KEY", "from-env")
    assert load_key("MW_AUDIT_KEY", tmp_path / "state") == b"from-env"
    monkeypatch.delenv("MW_AUDIT_KEY")
    with pytest.raises(AuditError, match="MW_AUDIT_KEY is not set"):
        load_key("MW_AUDIT_KEY", tmp_path / "other", create=False)


def register_decrease_finding() -> pd.DataFrame:
    """One finding: an open register decrease of meter M1."""
    return pd.DataFrame(
        [
            {
                "type": "register_decrease",
                "severity": "major",
                "meter_id": "M1",
                "transformer_id": "TA01",
                "starts_at": pd.Timestamp("2026-01-05T10:00Z"),
                "ends_at": pd.NaT,
                "summary": "s",
                "evidence": {},
            }
        ]
    )[list(FINDING_COLUMNS)]


def test_every_alert_change_is_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_AUDIT_KEY", KEY.decode())
    am = AlertManager(tmp_path / "alerts.jsonl")
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)
    (event, alert), *_ = am.process(register_decrease_finding(), now)
    am.acknowledge(alert.id, by="li", note="checking", now=now)
    am.resolve(alert.id, by="wang", now=now)
    am.close()
    log = tmp_path / "alerts-state" / "audit.jsonl"
    entries = [json.loads(x) for x in lines(log)]
    assert [e["event"] for e in entries] == [
        "alert.opened",
        "alert.acknowledged",
        "alert.resolved",
        "checkpoint",
    ]
    assert entries[1]["payload"]["by"] == "li" and entries[1]["payload"]["note"] == "checking"
    assert entries[2]["payload"]["alert"]["status"] == "resolved"
    assert verify(log, KEY).ok


def test_cli_audit_verify_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_AUDIT_KEY", KEY.decode())
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "audit.jsonl"
    build(p)
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify", "--log", str(p)])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output and "15 entries" in ok.output
    p.write_text("".join(_modify(lines(p))), encoding="utf-8")
    bad = runner.invoke(main, ["audit", "verify", "--log", str(p), "--json"])
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["ok"] is False and report["first_bad_seq"] == 7
    text = runner.invoke(main, ["audit", "verify", "--log", str(p)])
    assert text.exit_code == 1 and "first bad seq 7" in text.output


def test_other_writers_share_the_service_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meterwatch.alerts.audit import audit_log_from_config
    from meterwatch.config import AlertsConfig

    monkeypatch.setenv("MW_AUDIT_KEY", KEY.decode())
    cfg = AlertsConfig(feed=tmp_path / "alerts.jsonl")
    vee = audit_log_from_config(cfg)
    entry = vee.append("vee.edit", {"meter_id": "M1", "by": "li", "old": 1.0, "new": 2.0})
    assert entry["seq"] == 1 and entry["event"] == "vee.edit"
    am = AlertManager.from_config(cfg)
    am.silence(
        {"type": "outage"},
        starts_at=datetime(2026, 1, 5, tzinfo=UTC),
        ends_at=datetime(2026, 1, 6, tzinfo=UTC),
        author="li",
        comment="work",
    )
    vee.append("vee.estimate", {"meter_id": "M2"})
    am.close()
    log = tmp_path / "alerts-state" / "audit.jsonl"
    assert [json.loads(x)["event"] for x in lines(log)] == [
        "vee.edit",
        "silence.created",
        "vee.estimate",
        "checkpoint",
    ]
    assert verify(log, KEY).ok


def test_refuses_to_extend_a_chain_signed_with_another_key(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    build(p)
    with pytest.raises(AuditError, match=r"checkpoint seq 15 was not signed with \$OTHER"):
        AuditLog(p, b"other", key_source="$OTHER")
    assert verify(p, KEY).ok  # nothing was written
    AuditLog(p, KEY).append("x", {})  # the right key continues the chain
    assert verify(p, KEY).ok


def test_a_signed_log_without_its_key_is_read_but_never_gets_a_new_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a restore into a fresh directory looks like (backups leave the key out): reading
    the feed works and creates nothing; a change refuses, naming where the key must come from,
    instead of generating a key that could never verify the log."""
    monkeypatch.delenv("MW_AUDIT_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    feed = tmp_path / "alerts.jsonl"
    writer = AlertManager(feed)  # no key anywhere: generates one, signs with it at close
    ((_, alert),) = writer.process(
        register_decrease_finding(), datetime(2026, 1, 5, 12, tzinfo=UTC)
    )
    writer.close()
    state = tmp_path / "alerts-state"
    key = (state / "audit.key").read_bytes()
    (state / "audit.key").unlink()  # as restored from a backup
    log_before = (state / "audit.jsonl").read_bytes()

    runner = CliRunner()
    for args in (["list"], ["show", alert.id], ["report", "--at", "2026-01-05T13:00Z"]):
        res = runner.invoke(main, ["alerts", *args, "--feed", str(feed)])
        assert res.exit_code == 0, res.output
        assert "register_decrease" in res.output or "TA01" in res.output
    ack = runner.invoke(
        main, ["alerts", "ack", alert.id, "--feed", str(feed), "--at", "2026-01-05T13:00Z"]
    )
    assert ack.exit_code == 2
    assert "$MW_AUDIT_KEY is not set" in " ".join(ack.output.split())
    assert "Traceback" not in ack.output
    with pytest.raises(AuditError, match="a new key could never verify"):
        load_key("MW_AUDIT_KEY", state, log_path=state / "audit.jsonl")
    assert not (state / "audit.key").exists()
    assert (state / "audit.jsonl").read_bytes() == log_before  # not even a checkpoint

    (state / "audit.key").write_bytes(key)  # the original key back: work resumes
    ok = runner.invoke(
        main, ["alerts", "ack", alert.id, "--feed", str(feed), "--at", "2026-01-05T13:00Z"]
    )
    assert ok.exit_code == 0, ok.output
    assert verify(state / "audit.jsonl", key.strip()).ok
