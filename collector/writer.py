"""Batches readings from collectors into the spool or store; acknowledges them once durable.

Two modes, chosen by the service from ``storage.spool`` (see README, "Durability"):

* **spooled** (always with InfluxDB): a flush appends the pending frames to the durable
  :class:`~storage.spool.Spool` (one fsynced SQLite commit) and then runs the ``on_stored``
  callbacks (the MQTT acknowledgement). A store that encodes its own writes (InfluxDB: line
  protocol, ``encode_body`` / ``write_body``) gets the batch encoded once, at the flush, off
  the event loop; the spool keeps those bytes and the drain only posts them. A separate drain task sends spooled readings to the store
  oldest first, deletes them from the spool only after the store returned, and retries a failed
  store with exponential backoff and jitter while new readings keep being spooled. Readings that
  are in the spool when the process dies are drained after the restart.
* **direct** (the embedded store by default): a flush writes to the store (one DuckDB commit,
  itself durable through DuckDB's write-ahead log) and then runs the callbacks. A spool in front
  of a local DuckDB file would only write every reading twice to the same disk.

A submission is a canonical frame (pollers) or a list of reading dicts (the MQTT collector, so
that it builds no pandas object per message). A flush makes one frame of all pending items, in
submission order: every list goes through one :func:`~meterwatch.core.schema.readings_from_records`
call, frames pass through unchanged. Besides the canonical columns they may carry the optional
``collected_at`` / ``device_ts`` (:data:`meterwatch.core.schema.READING_TIME_COLUMNS`), which the spool
keeps and both stores store (a flush mixing frames with and without them fills NaT).

Listeners (streaming analytics) get every frame once it is durable (in the store, or in the
spool when it holds encoded batches) through a bounded hand-off: a task runs them off the event
loop on the frames that arrived meanwhile, concatenated, so a slow listener never delays a flush
or an acknowledgement. Past ``max_listener_rows`` waiting, a frame is not handed to them; it is
counted (``stream_rows_skipped``) and logged once per episode (the scheduled analytics still
judge every stored reading).

Nothing is dropped silently: a submit past ``max_pending_rows`` in memory, or while the spool is
full, is refused (``submit`` returns False), counted as ``readings_refused`` (and
``spool_refused`` when the spool is the reason) and logged once per episode; the caller keeps or
re-requests the data (an unacknowledged MQTT message stays with the broker).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from meterwatch.core.errors import StorageError
from meterwatch.core.quantities import READING_FIELDS
from meterwatch.core.stats import Stats
from meterwatch.storage.lp_encode import CONFLICTS_MEASUREMENT, ColumnBatch, ColumnEncoder
from meterwatch.storage.recent import CONFLICT, NEW, RecentReadings
from meterwatch.storage.spool import Spool, SpoolBatch, SpoolFullError, drain_forever

if TYPE_CHECKING:
    import pandas as pd

    from meterwatch.storage.base import ReadingStore

# pandas is imported where frames are handled: a writer that only gets ColumnBatch items (the
# lean MQTT ingest process) never loads it.

log = logging.getLogger(__name__)

Done = Callable[[], None]
#: Called with the reason when a submitted list cannot be made into readings at all.
Failed = Callable[[str], None]
StoredListener = Callable[["pd.DataFrame"], None]


@runtime_checkable
class EncodingStore(Protocol):
    """A store whose writes are request bodies encoded ahead (InfluxStore: line protocol)."""

    def encode_body(self, df: pd.DataFrame) -> tuple[bytes, int]: ...

    def write_body(self, body: bytes, lines: int) -> int: ...


@runtime_checkable
class BodyWriter(Protocol):
    """What the drain of encoded batches needs of a store (InfluxWriter, InfluxStore)."""

    def write_body(self, body: bytes, lines: int) -> int: ...


#: Reading dicts as :func:`meterwatch.core.schema.readings_from_records` takes them.
Records = list[dict[str, Any]]

#: Window over which ``store_write_rows_per_second`` is averaged [wall s].
RATE_WINDOW_S = 10.0
#: Store attributes mirrored as stats counters (InfluxStore has them; other stores need not).
_STORE_COUNTERS = (
    ("retries", "store_retries"),
    ("lines_dead_lettered", "store_lines_dead_lettered"),
    ("rows_skipped", "store_rows_skipped_empty"),
    ("rows_invalid", "store_rows_invalid"),
    ("duplicates", "readings_duplicate"),
    ("conflicts", "readings_conflicting"),
)


@dataclass
class _Item:
    readings: pd.DataFrame | Records | ColumnBatch
    on_stored: Done | None
    on_failed: Failed | None = None


def _frame_of(items: list[_Item]) -> pd.DataFrame | ColumnBatch:
    """One frame of the items' readings, in submission order (one ColumnBatch of ColumnBatch
    items: a writer gets either kind, never both).

    All record lists go through one ``readings_from_records`` call; consecutive record items
    become one slice of it, so there are at most about twice as many pieces as frame items.
    """
    if isinstance(items[0].readings, ColumnBatch):
        return ColumnBatch.concat([i.readings for i in items])  # type: ignore[misc]
    import pandas as pd

    from meterwatch.core.schema import empty_readings, readings_from_records

    lists = [i.readings for i in items if isinstance(i.readings, list)]
    records = readings_from_records(chain.from_iterable(lists)) if lists else None
    pieces: list[pd.DataFrame] = []
    start = run = 0
    for item in items:
        if isinstance(item.readings, list):
            run += len(item.readings)
            continue
        if run:
            assert records is not None
            pieces.append(records.iloc[start : start + run])
            start, run = start + run, 0
        if len(item.readings):
            pieces.append(item.readings)
    if run:
        assert records is not None
        pieces.append(records.iloc[start : start + run])
    if len(pieces) == 1 and pieces[0] is records:
        return records
    if pieces:
        return pd.concat(pieces, ignore_index=True)
    first = items[0].readings
    return (
        pd.DataFrame(columns=first.columns) if isinstance(first, pd.DataFrame) else empty_readings()
    )


class ReadingWriter:
    """One writer per process: collectors submit readings; the writer makes them durable in batches.

    ``on_stored`` callbacks run only once the rows are durable: in the spool when there is one,
    otherwise in the store. ``listeners`` (streaming analytics) see every frame the store stored.
    """

    def __init__(
        self,
        store: ReadingStore,
        stats: Stats,
        *,
        spool: Spool | None = None,
        flush_interval_s: float = 0.25,
        drain_interval_s: float = 1.0,
        drain_batch_rows: int = 5000,
        max_pending_rows: int = 200_000,
        backoff_cap_s: float = 30.0,
        listeners: list[StoredListener] | None = None,
        max_listener_rows: int = 200_000,
    ):
        self.store = store
        self.stats = stats
        self.spool = spool
        self.flush_interval_s = flush_interval_s
        self.drain_interval_s = drain_interval_s
        self.drain_batch_rows = drain_batch_rows
        self.max_pending_rows = max_pending_rows
        self.backoff_cap_s = backoff_cap_s
        self.listeners = listeners or []
        self.max_listener_rows = max_listener_rows
        self._listen_queue: list[pd.DataFrame] = []
        self._listen_rows = 0
        self._listen_wake = asyncio.Event()
        self._listen_task: asyncio.Task[None] | None = None
        self._listen_skip_logged = False
        # With a store that posts encoded bodies the spool keeps batches encoded (line protocol).
        self._encoding = spool is not None and isinstance(store, BodyWriter)
        #: What was spooled for InfluxDB lately (storage/recent.py): repeats and conflicts.
        self.recent: RecentReadings | None = None
        if self._encoding and spool is not None and spool.recent_capacity:
            self.recent = RecentReadings(spool.recent_capacity)
            self.recent.load(spool.recent_keys())
        self._columns = ColumnEncoder(getattr(store, "measurement", "readings"))
        self._conflicts_logged_at = -1e9
        self._pending: list[_Item] = []
        self._pending_rows = 0
        #: Readings a flush has taken out of ``_pending`` and not yet made durable.
        self._flushing_rows = 0
        self._wake = asyncio.Event()
        self._drain_wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._store_failing = False
        self._closing = False
        self._spool_full_logged = False
        self._rate: deque[tuple[float, int]] = deque()
        self._store_seen: dict[str, int] = {}
        self._random = random.Random()
        if spool is not None and spool.depth_rows:
            log.info(
                "spool %s holds %d readings from a previous run; draining them to the store",
                spool.file,
                spool.depth_rows,
            )
        self._update_gauges()

    @property
    def pending_rows(self) -> int:
        """Readings submitted but not yet durable (in memory), a flush's in progress included."""
        return self._pending_rows + self._flushing_rows

    @property
    def spool_rows(self) -> int:
        """Readings durable in the spool, waiting for the store."""
        return self.spool.depth_rows if self.spool is not None else 0

    def has_room(self, rows: int = 1) -> bool:
        """Whether :meth:`submit` would take ``rows`` readings now (spool not full, pending
        rows within bound)."""
        if self.spool is not None and self.spool.is_full:
            return False
        return self._pending_rows + rows <= self.max_pending_rows

    def submit(
        self,
        readings: pd.DataFrame | Records | ColumnBatch,
        on_stored: Done | None = None,
        on_failed: Failed | None = None,
    ) -> bool:
        """Queue a canonical frame or a list of reading dicts (event-loop thread only).

        False if refused (counted). A list must hold what ``readings_from_records`` accepts;
        it is turned into a frame at the flush, with the other pending lists. A list that
        cannot be (it would fail every flush) is taken out alone, counted
        (``readings_unbuildable``), never acknowledged, and ``on_failed(reason)`` is called.
        """
        rows = len(readings)
        if self.spool is not None and self.spool.is_full:
            self._refuse(rows, spool_full=True)
            return False
        if self._pending_rows + rows > self.max_pending_rows:
            self._refuse(rows, spool_full=False)
            return False
        self._pending.append(_Item(readings, on_stored, on_failed))
        self._pending_rows += rows
        # At once, not at the next flush: a reader of the gauge must never see 0 while
        # readings wait in memory.
        self.stats.set_gauge("writer_pending_rows", self.pending_rows)
        if self._pending_rows >= self.drain_batch_rows:
            self._wake.set()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reading-writer")
        self._listen_task = asyncio.create_task(self._listen_loop(), name="stored-listeners")
        if self.spool is not None:
            self._drain_task = asyncio.create_task(self._drain_loop(), name="spool-drainer")

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Flush what is pending; with a spool, drain it for up to ``drain_timeout_s``; stop.

        What the store does not take in time stays in the spool for the next start.
        """
        # Stop the loops by flag, not only by cancel(): on Python 3.11 a cancel that races with
        # asyncio.wait_for's inner wait can be lost, and the loop would keep running.
        self._closing = True
        self._wake.set()
        self._drain_wake.set()
        tasks = {t for t in (self._task, self._drain_task) if t is not None}
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=drain_timeout_s)
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)
        try:
            await self.flush()
        except StorageError:
            log.error("writer closing: %d readings could not be made durable", self._pending_rows)
        if self.spool is None:
            await self._stop_listeners()
            return
        deadline = time.monotonic() + drain_timeout_s
        try:
            # While the store is failing a last drain would only wait out its retry budget.
            while self.spool.depth_rows and not self._store_failing and time.monotonic() < deadline:
                await self.drain_once()
        except StorageError:
            pass
        if self._pending_rows:  # the drain may have made room for what the full spool refused
            try:
                await self.flush()
            except StorageError:
                self.stats.count("readings_lost_at_close", self._pending_rows)
                log.error(
                    "writer closing: %d accepted readings could not be made durable "
                    "(counted as readings_lost_at_close; never acknowledged upstream)",
                    self._pending_rows,
                )
        if self.spool.depth_rows:
            log.warning(
                "%d readings stay in the spool %s; they are sent at the next start",
                self.spool.depth_rows,
                self.spool.file,
            )
        self._update_gauges()
        await self._stop_listeners()

    async def _stop_listeners(self) -> None:
        """Let the listeners see what is queued, then end their task."""
        task, self._listen_task = self._listen_task, None
        if task is None:
            return
        self._listen_wake.set()
        await self._run_listeners()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    # ------------------------------------------------------------------ flush

    def _keep(self, items: list[_Item], rows: int) -> None:
        """A flush's items back in front of the pending ones (not durable, not acknowledged)."""
        self._pending = items + self._pending
        self._pending_rows += rows
        self._flushing_rows = 0

    async def flush(self) -> None:
        """Make every pending item durable (spool or store), then acknowledge it."""
        if not self._pending:
            return
        items, self._pending, rows = self._pending, [], self._pending_rows
        self._pending_rows = 0
        # Still in memory until durable: counted as pending meanwhile (gauge, summary).
        self._flushing_rows = rows
        try:
            try:  # off the event loop (polls and acknowledgements go on meanwhile)
                try:
                    frame = await asyncio.to_thread(_frame_of, items)
                except Exception:
                    items = self._without_unbuildable(items)
                    rows = sum(len(i.readings) for i in items)
                    if not items:
                        return
                    frame = await asyncio.to_thread(_frame_of, items)
            except BaseException:
                self._keep(items, rows)  # kept, not acknowledged
                raise
            if self.spool is not None:
                await self._flush_to_spool(items, frame, rows)
            else:
                assert not isinstance(frame, ColumnBatch), "column batches go through the spool"
                await self._flush_to_store(items, frame, rows)
        finally:
            self._flushing_rows = 0
            self._update_gauges()

    async def _flush_to_spool(
        self, items: list[_Item], frame: pd.DataFrame | ColumnBatch, rows: int
    ) -> None:
        assert self.spool is not None
        if len(frame):
            try:
                await asyncio.to_thread(self._spool_append, frame)
            except SpoolFullError:
                # Accepted while there was room, but an earlier flush filled the spool: keep
                # them in memory (not acknowledged) and retry with backoff while the spool
                # drains. New submissions are refused meanwhile (submit checks is_full).
                self._keep(items, rows)
                self.stats.count("spool_full_retries")
                self._refuse(0, spool_full=True)
                raise
            except StorageError as exc:
                self._keep(items, rows)
                self.stats.count("spool_errors")
                log.error("spool append failed, keeping %d readings in memory: %s", rows, exc)
                raise
            self.stats.count("readings_spooled", len(frame))
        self._ack(items)
        self._update_gauges()
        self._drain_wake.set()
        if self._encoding and not isinstance(frame, ColumnBatch):
            self._notify(frame)  # durable now; the drain posts bytes and has no frame

    def _spool_append(self, frame: pd.DataFrame | ColumnBatch) -> None:
        """Append one flush to the spool (worker thread): encoded for the store when it can,
        repeats of what was spooled lately left out and conflicts kept apart."""
        assert self.spool is not None
        if not self._encoding:
            assert not isinstance(frame, ColumnBatch)
            self.spool.append(frame)
            return
        if isinstance(frame, ColumnBatch):
            body, lines, keys, conflicts = self._encode_columns(frame)
        else:
            body, lines, keys, conflicts = self._encode_frame(frame)
        if lines:
            self.spool.append_encoded(body, lines, keys)
        if self.recent is not None:
            self.recent.load(keys)  # durable now
        if conflicts:
            self._report_conflicts(conflicts)

    def _judge(
        self, meters: list[str], seconds: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Verdict per row against what was spooled lately (all new without a window)."""
        if self.recent is None:
            return np.zeros(len(meters), dtype=np.int8), []
        verdict, keys = self.recent.judge(meters, seconds, values)
        dup = int((verdict == 1).sum())
        if dup:
            self.stats.count("readings_duplicate", dup)
        return verdict, keys

    def _encode_columns(self, batch: ColumnBatch) -> tuple[bytes, int, list[tuple[int, int]], int]:
        """Line protocol of a ColumnBatch: (body, lines, new keys, conflicts)."""
        empty = np.isnan(batch.values).all(axis=1)
        if empty.any():
            self._count_store("rows_skipped", int(empty.sum()))
        valid = np.flatnonzero(~empty)
        verdict, keys = self._judge(
            [batch.meter_id[i] for i in valid.tolist()], batch.seconds[valid], batch.values[valid]
        )
        lines = self._columns.encode(batch, valid[verdict == NEW])
        conflict_rows = valid[verdict == CONFLICT]
        if len(conflict_rows):
            lines += self._columns.encode(
                batch, conflict_rows, CONFLICTS_MEASUREMENT, detected_at=int(time.time())
            )
        body = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
        return body, len(lines), keys, len(conflict_rows)

    def _encode_frame(self, frame: pd.DataFrame) -> tuple[bytes, int, list[tuple[int, int]], int]:
        """Line protocol of a canonical frame (registry tags): (body, lines, new keys, conflicts)."""
        store: Any = self.store
        if self.recent is None:
            body, lines = store.encode_body(frame)
            return body, lines, [], 0
        from meterwatch.storage.line_protocol import epoch_seconds

        frame = frame.reset_index(drop=True)
        secs, has_ts = epoch_seconds(frame["ts"])
        meters = frame["meter_id"].astype(object)
        values = frame[list(READING_FIELDS)].to_numpy(dtype="float64", na_value=np.nan)
        # Rows the encoder skips (no meter or ts, nothing measured) are not judged.
        judged = np.flatnonzero(has_ts & meters.notna().to_numpy() & ~np.isnan(values).all(1))
        verdict, keys = self._judge(
            [str(m) for m in meters.to_numpy()[judged]], secs[judged], values[judged]
        )
        drop = np.zeros(len(frame), dtype=bool)
        drop[judged[verdict != NEW]] = True
        body, lines = store.encode_body(frame[~drop]) if not drop.all() else (b"", 0)
        conflict_rows = judged[verdict == CONFLICT]
        if len(conflict_rows):
            now = int(time.time())
            times = {}
            for col in ("collected_at", "device_ts"):
                t, has = epoch_seconds(frame[col]) if col in frame else (secs, has_ts)
                times[col] = np.where(has, t, now if col == "collected_at" else secs)
            batch = ColumnBatch(
                [str(m) for m in meters.to_numpy()],
                secs,
                times["device_ts"],
                values,
                times["collected_at"],
            )
            extra = self._columns.encode(batch, conflict_rows, CONFLICTS_MEASUREMENT, now)
            body += ("\n".join(extra) + "\n").encode("utf-8")
            lines += len(extra)
        return body, lines, keys, len(conflict_rows)

    def _count_store(self, attr: str, n: int) -> None:
        """Add to a store counter that the gauges mirror (rows_skipped ...)."""
        if isinstance(getattr(self.store, attr, None), int):
            setattr(self.store, attr, getattr(self.store, attr) + n)

    def _report_conflicts(self, n: int) -> None:
        """Count conflicts; log them at most once a minute (they are in reading_conflicts)."""
        self.stats.count("readings_conflicting", n)
        now = time.monotonic()
        if now - self._conflicts_logged_at >= 60.0:
            self._conflicts_logged_at = now
            log.warning(
                "%d readings disagree with ones already written for the same meter and time: "
                "kept apart in the %s measurement (counted readings_conflicting)",
                n,
                CONFLICTS_MEASUREMENT,
            )

    async def _flush_to_store(self, items: list[_Item], frame: pd.DataFrame, rows: int) -> None:
        try:
            written = await asyncio.to_thread(self.store.write_readings, frame)
        except StorageError as exc:
            self._keep(items, rows)
            self._store_failed(exc, rows)
            raise
        self._store_ok(written)
        self._ack(items)
        self._notify(frame)

    # ------------------------------------------------------------------ drain

    async def drain_once(self) -> int:
        """Send the oldest spooled readings to the store; remove them once stored. Rows sent."""
        assert self.spool is not None
        batch = await asyncio.to_thread(self.spool.peek, self.drain_batch_rows)
        if batch is None:
            return 0
        try:
            written = await asyncio.to_thread(self._drain_write, batch)
        except StorageError as exc:
            self._store_failed(exc, self.spool.depth_rows)
            raise
        # Not fsynced on its own (the next append's fsync covers it): a crash right after a
        # drain may write the batch again, which both stores take as a repeat.
        await asyncio.to_thread(partial(self.spool.remove_through, batch.last_seq, durable=False))
        self.stats.count("readings_drained", batch.rows)
        self._store_ok(written)
        self._update_gauges()
        if batch.frame is not None:
            self._notify(batch.frame)
        return batch.rows

    def _drain_write(self, batch: SpoolBatch) -> int:
        """Write one spooled batch to the store (worker thread); lines/rows written."""
        if batch.frame is not None:
            return self.store.write_readings(batch.frame)
        store: Any = self.store
        if not isinstance(store, BodyWriter):
            raise StorageError(
                f"spool {self.spool.file if self.spool else ''} holds encoded batches but the "
                f"store {type(store).__name__} cannot write them"
            )
        # One POST for the whole peek (whole flushes up to drain_batch_rows), not one per flush.
        return store.write_body(
            b"".join(body for body, _ in batch.bodies), sum(n for _, n in batch.bodies)
        )

    async def _drain_loop(self) -> None:
        await drain_forever(
            self.drain_once,
            self._drain_wake,
            lambda: self._closing,
            interval_s=self.drain_interval_s,
            backoff_cap_s=self.backoff_cap_s,
            rng=self._random,
            after_round=self._update_gauges,
        )

    async def _run(self) -> None:
        backoff = self.flush_interval_s
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                return
            try:
                await self.flush()
                backoff = self.flush_interval_s
            except StorageError:
                backoff = min(backoff * 2, self.backoff_cap_s)
            except Exception:  # a bug must not end the writer: nothing pending is dropped
                self.stats.count("writer_errors")
                log.exception("writer flush failed; %d readings kept pending", self._pending_rows)
                backoff = min(backoff * 2, self.backoff_cap_s)
            self._update_gauges()

    # ---------------------------------------------------------------- helpers

    def _without_unbuildable(self, items: list[_Item]) -> list[_Item]:
        """``items`` less those that cannot be made into a frame (tried one at a time, only
        after a flush failed to), so one bad submission does not block every later one."""
        keep: list[_Item] = []
        for item in items:  # loop over pending submissions, on the failure path only
            try:
                _frame_of([item])
            except Exception as exc:
                rows = len(item.readings)
                self.stats.count("readings_unbuildable", rows)
                log.error("%d readings cannot be stored and are not acknowledged: %s", rows, exc)
                if item.on_failed is not None:
                    item.on_failed(f"{type(exc).__name__}: {exc}")
                continue
            keep.append(item)
        return keep

    def _ack(self, items: list[_Item]) -> None:
        for item in items:
            if item.on_stored is not None:
                item.on_stored()

    def _notify(self, frame: pd.DataFrame) -> None:
        """Queue a durable frame for the listeners (bounded; see the module docstring)."""
        if not self.listeners or not len(frame):
            return
        if self._listen_rows + len(frame) > self.max_listener_rows:
            self.stats.count("stream_rows_skipped", len(frame))
            if not self._listen_skip_logged:
                log.warning(
                    "streaming detection is behind (%d readings waiting): later batches are "
                    "left to the scheduled analytics (counted as stream_rows_skipped)",
                    self._listen_rows,
                )
                self._listen_skip_logged = True
            return
        self._listen_queue.append(frame)
        self._listen_rows += len(frame)
        self._listen_wake.set()

    async def _listen_loop(self) -> None:
        while True:
            await self._listen_wake.wait()
            self._listen_wake.clear()
            await self._run_listeners()

    async def _run_listeners(self) -> None:
        if not self._listen_queue:
            return
        frames, self._listen_queue, self._listen_rows = self._listen_queue, [], 0
        self._listen_skip_logged = False
        import pandas as pd

        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        for listener in self.listeners:
            # Off the event loop: listeners run analytics, which must not delay polls or acks.
            try:
                await asyncio.to_thread(listener, frame)
            except Exception:
                log.exception("listener on stored readings failed")

    def _refuse(self, rows: int, *, spool_full: bool) -> None:
        self.stats.count("readings_refused", rows)
        if spool_full:
            self.stats.count("spool_refused", rows)
            if not self._spool_full_logged:
                assert self.spool is not None
                log.error(
                    "spool %s is full (%d bytes, storage.spool.max_bytes=%d): refusing new "
                    "readings until the store catches up; refusals are counted (spool_refused)",
                    self.spool.file,
                    self.spool.depth_bytes,
                    self.spool.max_bytes,
                )
                self._spool_full_logged = True

    def _store_failed(self, exc: StorageError, rows: int) -> None:
        self.stats.count("store_errors")
        if not self._store_failing:
            log.error("store write failed, keeping %d readings to retry: %s", rows, exc)
            self._store_failing = True

    def _store_ok(self, written: int) -> None:
        if self._store_failing:
            log.info("store writes recovered")
            self._store_failing = False
        self.stats.count("readings_stored", written)
        now = time.monotonic()
        self._rate.append((now, written))

    def _mirror_store_counters(self) -> None:
        """Copy the store's own counters (InfluxDB retries, dead-lettered lines) into stats."""
        for attr, name in _STORE_COUNTERS:
            value = getattr(self.store, attr, None)
            if isinstance(value, int):
                delta = value - self._store_seen.get(attr, 0)
                if delta > 0:
                    self.stats.count(name, delta)
                    self._store_seen[attr] = value

    def _update_gauges(self) -> None:
        self._mirror_store_counters()
        now = time.monotonic()
        while self._rate and self._rate[0][0] < now - RATE_WINDOW_S:
            self._rate.popleft()
        self.stats.set_gauge(
            "store_write_rows_per_second", sum(n for _, n in self._rate) / RATE_WINDOW_S
        )
        self.stats.set_gauge("writer_pending_rows", self.pending_rows)
        if self.spool is not None:
            if not self.spool.is_full:
                self._spool_full_logged = False
            self.stats.set_gauge("spool_depth_rows", self.spool.depth_rows)
            self.stats.set_gauge("spool_depth_bytes", self.spool.depth_bytes)
            self.stats.set_gauge("spool_oldest_pending_seconds", self.spool.oldest_age_s())
            self.stats.set_gauge("spool_max_bytes", self.spool.max_bytes)
