"""Batches readings from collectors into the store; runs callbacks once they are durable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from meterwatch.errors import StorageError
from meterwatch.stats import Stats
from storage.base import ReadingStore

log = logging.getLogger(__name__)

Done = Callable[[], None]
StoredListener = Callable[[pd.DataFrame], None]


@dataclass
class _Item:
    frame: pd.DataFrame
    on_stored: Done | None


class ReadingWriter:
    """One writer task per process: collectors submit frames; the writer stores them in batches.

    ``on_stored`` callbacks (e.g. the MQTT acknowledgement) run only after the store returned,
    i.e. after the rows are durable. Pending rows are bounded by ``max_pending_rows``; a submit
    past that is refused, counted as ``readings_refused`` and reported to the caller, never
    dropped silently. A failed write is retried with backoff, keeping the batch.
    """

    def __init__(
        self,
        store: ReadingStore,
        stats: Stats,
        *,
        flush_interval_s: float = 0.25,
        max_pending_rows: int = 200_000,
        listeners: list[StoredListener] | None = None,
    ):
        self.store = store
        self.stats = stats
        self.flush_interval_s = flush_interval_s
        self.max_pending_rows = max_pending_rows
        self.listeners = listeners or []
        self._pending: list[_Item] = []
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store_failing = False

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def submit(self, frame: pd.DataFrame, on_stored: Done | None = None) -> bool:
        """Queue a canonical frame (event-loop thread only). False if refused (queue full)."""
        if self._pending_rows + len(frame) > self.max_pending_rows:
            self.stats.count("readings_refused", len(frame))
            return False
        self._pending.append(_Item(frame, on_stored))
        self._pending_rows += len(frame)
        if self._pending_rows >= 5000:
            self._wake.set()
        return True

    def submit_threadsafe(self, frame: pd.DataFrame, on_stored: Done | None = None) -> None:
        """Queue from another thread (the MQTT network thread)."""
        assert self._loop is not None, "writer not started"
        self._loop.call_soon_threadsafe(self.submit, frame, on_stored)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="reading-writer")

    async def close(self) -> None:
        """Flush what is pending, then stop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        items, self._pending, rows = self._pending, [], self._pending_rows
        self._pending_rows = 0
        frame = pd.concat([i.frame for i in items], ignore_index=True)
        try:
            written = await asyncio.to_thread(self.store.write_readings, frame)
        except StorageError as exc:
            self._pending = items + self._pending
            self._pending_rows += rows
            self.stats.count("store_errors")
            if not self._store_failing:
                log.error("store write failed, keeping %d readings to retry: %s", rows, exc)
                self._store_failing = True
            raise
        if self._store_failing:
            log.info("store writes recovered")
            self._store_failing = False
        self.stats.count("readings_stored", written)
        for item in items:
            if item.on_stored is not None:
                item.on_stored()
        for listener in self.listeners:
            # Off the event loop: listeners run analytics, which must not delay polls or acks.
            try:
                await asyncio.to_thread(listener, frame)
            except Exception:
                log.exception("listener on stored readings failed")

    async def _run(self) -> None:
        backoff = self.flush_interval_s
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                backoff = self.flush_interval_s
            except StorageError:
                backoff = min(backoff * 2, 30.0)
