"""Alert state changes to the store's ``alert_events`` through a durable outbox.

An :class:`AlertEventSink` is an alert-manager listener (``(event, alert)``). Every change becomes
one ``alert_events`` row (:func:`storage.measurements.alert_event_frame`), appended to an outbox
(a :class:`~storage.spool.Spool`, SQLite WAL, fsynced) and written to the store by a drain task,
oldest first; a row leaves the outbox only after the store took it. So:

* **The event loop never waits for the store.** A change reported on the loop thread (a poller's
  ``meter_offline`` finding) is only queued in memory there; the drain task moves it to the
  outbox off the loop. A change reported from a worker thread (analytics) is appended to the
  outbox at once, in that thread.
* **A store outage loses nothing.** While ``write_alert_events`` raises, rows stay in the outbox
  and the drain retries with exponential backoff and jitter (capped at ``backoff_cap_s``); a
  restart drains what a previous run left. Replays are harmless: the embedded store reads one row
  per (id, event, ts); InfluxDB overwrites the same series and time.
* **Counted, never silent.** ``alert_events_queued``, ``alert_events_stored``,
  ``alert_events_store_errors`` (failed store writes, retried) and ``alert_events_failed``
  (rows that could not be put in the outbox, e.g. disk full or outbox at ``max_bytes``: they
  are still in the alert feed, which is the record of truth). The first failure of an episode is
  logged, and the recovery.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from meterwatch.core.errors import StorageError
from meterwatch.core.stats import Stats
from meterwatch.storage.measurements import alert_event_frame, normalize_alert_events
from meterwatch.storage.spool import Spool, drain_forever

log = logging.getLogger(__name__)

OUTBOX_FILE = "alert-events.sqlite3"


class _Alert(Protocol):
    updated_at: datetime | None

    def to_json(self) -> dict[str, Any]: ...


class AlertEventSink:
    """Alert-manager listener writing every change to ``store.write_alert_events`` durably."""

    def __init__(
        self,
        store: Any,
        stats: Stats,
        outbox_dir: str | Path,
        *,
        max_bytes: int = 64 << 20,
        drain_interval_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        batch_rows: int = 1000,
    ):
        self.store = store
        self.stats = stats
        self.outbox = Spool(
            outbox_dir, max_bytes, file_name=OUTBOX_FILE, normalize=normalize_alert_events
        )
        self.drain_interval_s = drain_interval_s
        self.backoff_cap_s = backoff_cap_s
        self.batch_rows = batch_rows
        self._memory: list[pd.DataFrame] = []
        self._mem_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False
        self._random = random.Random()
        if self.outbox.depth_rows:
            log.info(
                "alert-event outbox %s holds %d events from a previous run; writing them",
                self.outbox.file,
                self.outbox.depth_rows,
            )

    @property
    def pending(self) -> int:
        """Events not yet in the store (memory + outbox)."""
        with self._mem_lock:
            mem = sum(len(f) for f in self._memory)
        return mem + self.outbox.depth_rows

    # ------------------------------------------------------------------- listener

    def __call__(self, event: str, alert: _Alert) -> None:
        frame = alert_event_frame([(event, alert.updated_at, alert.to_json())])
        self.stats.count("alert_events_queued")
        on_loop = self._loop is not None and _running_loop() is self._loop
        if on_loop:
            with self._mem_lock:
                self._memory.append(frame)
        else:
            self._append(frame)
        self._notify()

    def _append(self, frame: pd.DataFrame) -> bool:
        try:
            self.outbox.append(frame)
            return True
        except StorageError as exc:
            self.stats.count("alert_events_failed", len(frame))
            log.error("alert event not queued for the store (%s); it stays in the alert feed", exc)
            return False

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        if _running_loop() is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    # ---------------------------------------------------------------------- drain

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="alert-event-sink")
        if self.outbox.depth_rows:
            self._wake.set()

    async def flush_memory(self) -> None:
        """Move events queued on the loop thread into the outbox (off the loop)."""
        with self._mem_lock:
            frames, self._memory = self._memory, []
        if frames:
            frame = pd.concat(frames, ignore_index=True)
            await asyncio.to_thread(self._append, frame)

    async def drain_once(self) -> int:
        """Write the oldest outbox events to the store; remove them once stored. Rows written."""
        await self.flush_memory()
        batch = await asyncio.to_thread(self.outbox.peek, self.batch_rows)
        if batch is None:
            return 0
        try:
            assert batch.frame is not None  # this spool only holds frames
            await asyncio.to_thread(self.store.write_alert_events, batch.frame)
        except StorageError as exc:
            self.stats.count("alert_events_store_errors")
            if not self._failing:
                log.error(
                    "alert events: store write failed, %d kept in %s to retry: %s",
                    self.outbox.depth_rows,
                    self.outbox.file,
                    exc,
                )
                self._failing = True
            raise
        await asyncio.to_thread(self.outbox.remove_through, batch.last_seq)
        if self._failing:
            log.info("alert events: store writes recovered")
            self._failing = False
        self.stats.count("alert_events_stored", batch.rows)
        return batch.rows

    async def _run(self) -> None:
        assert self._wake is not None
        await drain_forever(
            self.drain_once,
            self._wake,
            lambda: self._closing,
            interval_s=self.drain_interval_s,
            backoff_cap_s=self.backoff_cap_s,
            rng=self._random,
        )

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the task, then write what is left (within ``timeout_s``); the rest stays queued."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            _, running = await asyncio.wait({self._task}, timeout=timeout_s)
            for task in running:
                task.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while loop.time() < deadline and await self.drain_once():
                pass
        except StorageError:
            pass
        await self.flush_memory()
        if self.outbox.depth_rows:
            log.warning(
                "%d alert events stay in %s; they are written at the next start",
                self.outbox.depth_rows,
                self.outbox.file,
            )
        self._loop = None
        self.outbox.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
