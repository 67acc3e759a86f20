"""Analytics partitions on a real Dask cluster (a ``distributed.LocalCluster`` of two worker
processes on 127.0.0.1): the findings equal the one-process run, also when a worker is killed
in the middle of a partition; ``meterwatch analyze --scheduler`` writes the same alert feed."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
from click.testing import CliRunner

import meterwatch.cluster as cluster
from meterwatch.analytics.base import Detector
from meterwatch.analytics.detectors.theft import gather_features, rank_features, theft_features
from meterwatch.analytics.partition import analyze_partitioned
from meterwatch.analytics.suite import default_detectors
from meterwatch.cli import main
from meterwatch.core.errors import ClusterError
from meterwatch.core.schema import empty_findings, with_time_columns
from tests.support.partitions import canonical_findings
from tests.support.servers import dask_cluster

Fleet = tuple[pd.DataFrame, pd.DataFrame, list[str]]


class KillsItsWorkerOnce(Detector):
    """A fault to inject: the first partition holding ``meter_id`` kills the worker process
    running it (SIGKILL, as the out-of-memory killer would), once: it leaves ``marker`` with
    that process's id. Finds nothing."""

    alert_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, marker: str = "", meter_id: str = "") -> None:
        self.marker = marker
        self.meter_id = meter_id

    def detect_window(self, w: Any) -> pd.DataFrame:
        if self.meter_id in set(w.ids):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return empty_findings()  # the retry: run normally
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
        return empty_findings()


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    with dask_cluster(workers=2) as address:
        yield address


@pytest.fixture(scope="module")
def one_process(several_areas: Fleet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Findings and ranked suspects of the fleet, partitions in this process."""
    readings, reg, _ = several_areas
    result = analyze_partitioned(
        default_detectors(), readings, reg, max_meters=51, extra={"theft_features": theft_features}
    )
    suspects = rank_features(gather_features(result.partials["theft_features"]))
    return canonical_findings(result.findings), suspects


def test_findings_on_a_dask_cluster_equal_the_one_process_run(
    scheduler: str, several_areas: Fleet, one_process: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    readings, reg, without_area = several_areas
    findings, suspects = one_process
    with cluster.connect(scheduler, timeout_s=30, setting="--scheduler") as client:
        assert len(client.nthreads()) == 2
        runner = cluster.DaskRunner(client)
        result = analyze_partitioned(
            default_detectors(),
            readings,
            reg,
            max_meters=51,
            runner=runner,
            extra={"theft_features": theft_features},
        )
    # Partitions: three areas of 51 meters and the meters without an area.
    assert len(result.partials["theft_features"]) == 4
    pd.testing.assert_frame_equal(findings, canonical_findings(result.findings))
    assert set(without_area) <= set(result.findings["meter_id"])
    assert {"theft_suspected", "transformer_loss"} <= set(result.findings["type"])
    ranked = rank_features(gather_features(result.partials["theft_features"]))
    pd.testing.assert_frame_equal(suspects, ranked)


def test_a_worker_killed_mid_run_is_retried_and_the_findings_are_unchanged(
    scheduler: str,
    several_areas: Fleet,
    one_process: tuple[pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
) -> None:
    readings, reg, _ = several_areas
    findings, _ = one_process
    marker = tmp_path / "killed"
    victim = str(reg.loc[reg["transformer_id"] == "TA02", "meter_id"].iat[0])
    detectors = [*default_detectors(), KillsItsWorkerOnce(str(marker), victim)]
    told: list[str] = []
    with cluster.connect(scheduler, timeout_s=30, setting="--scheduler") as client:
        runner = cluster.DaskRunner(client, on_retry=told.append)
        result = analyze_partitioned(detectors, readings, reg, max_meters=51, runner=runner)
        # The nanny starts a new worker process in the place of the killed one.
        client.wait_for_workers(2, timeout=60)
    pid = int(marker.read_text())
    assert pid != os.getpid()
    with pytest.raises(ProcessLookupError):  # that worker process is gone
        os.kill(pid, 0)
    # The partition came back once, from another attempt: the same findings, none twice.
    pd.testing.assert_frame_equal(findings, canonical_findings(result.findings))
    # Partitions whose input the killed worker held (the running one, one queued there) were
    # placed again by the runner, which said so once each; a running partition whose input
    # lived elsewhere is rescheduled by the scheduler itself.
    assert all("its worker died; running it again (1 of 3 retries)" in t for t in told), told
    assert len(told) == len(set(told))


def test_a_cluster_of_another_meterwatch_version_is_refused(
    scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "__version__", "9.9.9")
    with (
        pytest.raises(ClusterError, match=r"every worker needs meterwatch 9\.9\.9") as err,
        cluster.connect(scheduler, timeout_s=30, setting="analytics.scheduler"),
    ):
        pass
    assert err.value.address == scheduler and err.value.setting == "analytics.scheduler"
    assert str(err.value).startswith(f"analytics.scheduler {scheduler}: ")


def feed(path: Path) -> list[tuple[str, ...]]:
    """The alert feed without its run-specific fields (ids, times of the run)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(
        (
            r["type"],
            r.get("meter_id") or "",
            r.get("transformer_id") or "",
            r["starts_at"],
            r.get("ends_at") or "",
            r["summary"],
            json.dumps(r["evidence"], sort_keys=True),
        )
        for r in rows
    )


def test_analyze_with_scheduler_writes_the_same_alerts_and_suspects(
    scheduler: str, several_areas: Fleet, tmp_path: Path
) -> None:
    readings, reg, _ = several_areas
    # Parquet holds numbers: the file's text cells ("ERR") are read as missing beforehand.
    numbers = with_time_columns(readings)
    numbers.attrs = {}
    numbers.to_parquet(tmp_path / "readings.parquet", index=False)
    reg.to_csv(tmp_path / "meters.csv", index=False)
    config = tmp_path / "analyze.yaml"
    config.write_text(f"analytics:\n  scheduler: {scheduler}\n  scheduler_timeout: 30s\n")
    outputs = {}
    for label, extra in (
        ("here", []),
        ("flag", ["--scheduler", scheduler]),
        ("config", ["--config", str(config)]),
    ):
        out, sus = tmp_path / f"{label}.jsonl", tmp_path / f"{label}.csv"
        args = ["analyze", "--readings", str(tmp_path / "readings.parquet")]
        args += ["--meters", str(tmp_path / "meters.csv"), "--out", str(out)]
        args += ["--suspects", str(sus), "--partition-meters", "60", *extra]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        where = "in this process" if label == "here" else f"on the Dask cluster at {scheduler}"
        assert f"ran {where}" in res.stdout
        outputs[label] = (feed(out), sus.read_text())
    assert outputs["here"][0] and outputs["here"] == outputs["flag"] == outputs["config"]
