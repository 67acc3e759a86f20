"""`make run` twice on the same var/: the second run starts a fresh demo store and says so.

The demo's simulated clock starts at the same instant on every run. Written into the previous
run's store, the same simulated times interleave with the first run's readings and the
detectors see registers jump back (issue 16: 39 false ``register_decrease`` alerts). Here the
demo config runs twice without injected faults: the second run must move the first run's state
aside (kept, not deleted), report no alert the first run did not, and no ``register_decrease``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from meterwatch.cli import main
from meterwatch.storage.embedded import EmbeddedStore
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def alert_types(feed: Path) -> Counter[str]:
    """Alerts in the feed by type (none when no alert was ever written)."""
    latest: dict[str, str] = {}
    if not feed.exists():
        return Counter()
    for line in feed.read_text(encoding="utf-8").splitlines():
        alert = json.loads(line)
        latest[alert["id"]] = alert["type"]
    return Counter(latest.values())


def test_a_second_demo_run_starts_a_fresh_store_and_raises_no_false_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    cfg["simulator"]["anomalies"] = []  # every alert below would be a false one
    cfg["simulator"]["modbus"]["port"] = port = free_port()
    cfg["collector"]["modbus"]["gateways"][0]["port"] = port
    cfg["collector"]["mqtt"]["port"] = free_port()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MW_AUDIT_KEY", raising=False)
    runner = CliRunner()

    first = runner.invoke(main, ["run", "--duration", "15"])
    assert first.exit_code == 0, first.output
    assert "fresh demo store" not in first.output
    first_alerts = alert_types(tmp_path / "var" / "alerts.jsonl")

    second = runner.invoke(main, ["run", "--duration", "15"])
    assert second.exit_code == 0, second.output
    said = " ".join(second.output.split())
    assert "starts a fresh demo store" in said and "make reset-demo" in said
    second_alerts = alert_types(tmp_path / "var" / "alerts.jsonl")
    assert second_alerts["register_decrease"] == 0, second_alerts
    assert set(second_alerts) <= set(first_alerts), (first_alerts, second_alerts)

    # The first run is kept, whole, beside the fresh one.
    (previous,) = (tmp_path / "var" / "previous-runs").iterdir()
    assert (previous / "alerts-state" / "clock.json").exists()
    for store_path in (previous / "meterwatch.duckdb", tmp_path / "var" / "meterwatch.duckdb"):
        store = EmbeddedStore(store_path)
        try:
            rows, distinct = store.count_rows()
            first_ts = store.read_readings()["ts"].min()
        finally:
            store.close()
        assert rows == distinct > 0
        assert first_ts.isoformat().startswith("2026-01-05T00:")  # each run from clock.start
