"""Durable spool: readings wait on local disk between their acknowledgement and the store's write.

Why SQLite (WAL, ``synchronous=FULL``) rather than hand-rolled append-only segment files:

* **Durability per append.** In WAL mode with ``synchronous=FULL`` every commit fsyncs the WAL
  before ``commit()`` returns, so an append that returned survives ``kill -9`` and power loss;
  a torn last write is rolled back by SQLite's recovery at the next open, never half-read. A
  segment format needs its own framing, checksums and torn-tail repair to get the same.
* **Delete after drain is one transaction.** Segments can only be dropped whole, so a segment
  with one undrained batch keeps its drained neighbours on disk and the drainer must persist a
  separate read offset; here ``DELETE ... WHERE seq <= ?`` is atomic and the free pages are
  reused by later appends (the file does not grow without bound).
* **Standard library**, one file, inspectable with the ``sqlite3`` shell.

Layout: one table ``batches(seq INTEGER PRIMARY KEY AUTOINCREMENT, created_at, rows, nbytes,
data, encoded)``; one row per append, so an append costs one insert and one fsync whatever the
number of readings. ``data`` is either a frame as an Arrow IPC stream (zstd; ``encoded`` 0) or,
with InfluxDB, the batch already encoded as the store writes it (line protocol; ``encoded`` 1):
the drain then only posts those bytes, nothing is decoded or encoded again. ``AUTOINCREMENT`` keeps
``seq`` strictly increasing across deletes and restarts: draining by ascending ``seq`` is oldest
first.

Size policy (``max_bytes``, counting the stored ``data`` bytes): once the pending bytes reach
``max_bytes``, :meth:`Spool.append` refuses with :class:`SpoolFullError` (an append that starts
below the bound is accepted whole, so the overshoot is at most one batch). Nothing already in the
spool is ever dropped to make room: register readings are billing evidence. The caller refuses
the reading upstream instead (an MQTT message is left unacknowledged, so the broker keeps it; a
Modbus reading refused is counted as ``readings_refused`` and alerted on).

Frames keep the optional ``collected_at`` / ``device_ts`` columns (:func:`meterwatch.core.schema.with_time_columns`):
a batch that has them gives them back from :meth:`Spool.peek`; one that lacks them does not invent them
(mixed batches read back with NaT where a frame had none).

Replays are harmless: a batch whose store write succeeded but whose delete was lost (crash in
between) is written again at the next drain; both stores keep one reading per (meter_id, ts).
That is why the readings drain deletes without an fsync of its own (``durable=False``; the next
append's fsync makes it durable): an fsync per drained batch cost the drain ~10 % of InfluxDB's
raw write rate, for a guarantee a replay already gives.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meterwatch.core.errors import SpoolFullError, StorageError

if TYPE_CHECKING:
    import pandas as pd

    from meterwatch.storage.config import SpoolConfig

# pandas and pyarrow are imported where frames are handled, not here: the lean MQTT ingest
# process (encoded batches only) never loads them (docs/benchmarks.md, memory).

SPOOL_FILE = "spool.sqlite3"


@dataclass(frozen=True)
class SpoolBatch:
    """Oldest pending readings up to ``last_seq``: ``frame`` concatenates appended frames, or
    ``bodies`` holds encoded appends (one peek never mixes the two)."""

    last_seq: int
    batches: int
    frame: pd.DataFrame | None
    bodies: tuple[tuple[bytes, int], ...] = ()  # (encoded batch, readings in it)

    @property
    def rows(self) -> int:
        if self.frame is not None:
            return len(self.frame)
        return sum(n for _, n in self.bodies)


def encode_frame(frame: pd.DataFrame) -> bytes:
    """A frame as an Arrow IPC stream (zstd): how the spool stores it (and the control socket
    sends it)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def decode_frame(data: bytes) -> pd.DataFrame:
    """The frame :func:`encode_frame` wrote."""
    import pyarrow as pa

    with pa.ipc.open_stream(pa.BufferReader(data)) as reader:
        return reader.read_all().to_pandas()


class Spool:
    """A bounded, durable FIFO of canonical reading frames in ``path/spool.sqlite3``.

    Thread-safe (one lock around the connection); meant for one appender and one drainer.
    Depth (rows, bytes) and the oldest pending append time are kept in memory and recomputed from
    the file when it is opened, so a restarted process sees (and drains) what a killed one left.
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = 1 << 30,
        *,
        file_name: str = SPOOL_FILE,
        normalize: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        recent_capacity: int = 0,
    ):
        """``file_name`` and ``normalize`` (applied to frames read back; default
        :func:`~meterwatch.core.schema.with_time_columns`) let other record kinds use the same
        durable queue (the alert-event outbox, :mod:`storage.event_sink`). ``recent_capacity``:
        how many reading keys :meth:`append_encoded` keeps for :mod:`storage.recent`."""
        self.dir = Path(path)
        self.max_bytes = max_bytes
        self.file = self.dir / file_name
        self._normalize = normalize
        self.recent_capacity = recent_capacity
        self._lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(
                str(self.file), check_same_thread=False, isolation_level=None
            )
            mode = self._con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"spool {self.file}: cannot use WAL mode (got {mode})")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "created_at REAL NOT NULL, rows INTEGER NOT NULL, nbytes INTEGER NOT NULL, "
                "data BLOB NOT NULL, encoded INTEGER NOT NULL DEFAULT 0)"
            )
            # Keys of the readings appended last (storage/recent.py), oldest first.
            self._con.execute(
                "CREATE TABLE IF NOT EXISTS recent (n INTEGER PRIMARY KEY AUTOINCREMENT, "
                "key INTEGER NOT NULL, fp INTEGER NOT NULL)"
            )
            cols = {r[1] for r in self._con.execute("PRAGMA table_info(batches)").fetchall()}
            if "encoded" not in cols:  # a spool written before encoded batches existed
                self._con.execute(
                    "ALTER TABLE batches ADD COLUMN encoded INTEGER NOT NULL DEFAULT 0"
                )
            row = self._con.execute(
                "SELECT count(*), coalesce(sum(rows), 0), coalesce(sum(nbytes), 0), "
                "min(created_at) FROM batches"
            ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open spool {self.file}: {exc}") from exc
        self._batches = int(row[0])
        self._rows = int(row[1])
        self._bytes = int(row[2])
        self._oldest: float | None = float(row[3]) if row[3] is not None else None
        self.recovered_rows = self._rows

    @classmethod
    def from_config(cls, cfg: SpoolConfig) -> Spool:
        """The readings spool ``storage.spool`` describes."""
        return cls(cfg.path, cfg.max_bytes, recent_capacity=cfg.dedup_window)

    # ----------------------------------------------------------------- state

    @property
    def depth_rows(self) -> int:
        """Readings waiting for the store."""
        return self._rows

    @property
    def depth_bytes(self) -> int:
        """Bytes of pending readings (compressed, as stored)."""
        return self._bytes

    @property
    def depth_batches(self) -> int:
        return self._batches

    @property
    def is_full(self) -> bool:
        return self._bytes >= self.max_bytes

    def oldest_age_s(self, now: float | None = None) -> float:
        """Seconds since the oldest pending batch was appended (0 when empty) [wall s]."""
        if self._oldest is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self._oldest)

    # ------------------------------------------------------------ operations

    def append(self, frame: pd.DataFrame) -> int:
        """Store a frame durably (fsynced when this returns); return its sequence number.

        Raises :class:`SpoolFullError` when the spool already holds ``max_bytes``.
        """
        if self._bytes >= self.max_bytes:
            raise SpoolFullError(self.file, self._bytes, self.max_bytes)
        return self._insert(encode_frame(frame), len(frame), encoded=False)

    def append_encoded(self, body: bytes, rows: int, keys: Sequence[tuple[int, int]] = ()) -> int:
        """Store a batch already encoded for the store (line protocol), durably; its seq.

        ``keys`` (:mod:`storage.recent`) are kept in the same transaction, the last
        ``recent_capacity`` of them. Raises :class:`SpoolFullError` when the spool already
        holds ``max_bytes``.
        """
        if self._bytes >= self.max_bytes:
            raise SpoolFullError(self.file, self._bytes, self.max_bytes)
        return self._insert(body, rows, encoded=True, keys=keys)

    def recent_keys(self) -> list[tuple[int, int]]:
        """The reading keys :meth:`append_encoded` kept, oldest first."""
        with self._lock:
            try:
                rows = self._con.execute("SELECT key, fp FROM recent ORDER BY n").fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"spool {self.file}: read failed: {exc}") from exc
        return [(int(k), int(f)) for k, f in rows]

    def _insert(
        self, data: bytes, rows: int, *, encoded: bool, keys: Sequence[tuple[int, int]] = ()
    ) -> int:
        now = time.time()
        with self._lock:
            try:
                self._con.execute("BEGIN IMMEDIATE")
                cur = self._con.execute(
                    "INSERT INTO batches (created_at, rows, nbytes, data, encoded) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (now, rows, len(data), data, int(encoded)),
                )
                if keys and self.recent_capacity:
                    self._con.executemany("INSERT INTO recent (key, fp) VALUES (?, ?)", keys)
                    last = self._con.execute("SELECT max(n) FROM recent").fetchone()[0]
                    self._con.execute(
                        "DELETE FROM recent WHERE n <= ?", (int(last) - self.recent_capacity,)
                    )
                self._con.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._con.in_transaction:
                    self._con.execute("ROLLBACK")
                raise StorageError(f"spool {self.file}: append failed: {exc}") from exc
            self._batches += 1
            self._rows += rows
            self._bytes += len(data)
            if self._oldest is None:
                self._oldest = now
            seq = cur.lastrowid
        assert seq is not None
        return int(seq)

    def peek(self, max_rows: int = 5000) -> SpoolBatch | None:
        """The oldest pending frames, whole appends up to ``max_rows`` (at least one); None if empty."""
        with self._lock:
            try:
                # Sizes first (cheap), then only the chosen blobs.
                heads = self._con.execute(
                    "SELECT seq, rows, encoded FROM batches ORDER BY seq LIMIT 1000"
                ).fetchall()
                if not heads:
                    return None
                last, total, kind = heads[0][0], 0, heads[0][2]
                for seq, n, enc in heads:
                    if enc != kind or (total and total + n > max_rows):
                        break
                    last, total = seq, total + n
                chosen: list[tuple[int, bytes, int]] = self._con.execute(
                    "SELECT seq, data, rows FROM batches WHERE seq <= ? ORDER BY seq", (last,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"spool {self.file}: read failed: {exc}") from exc
        if kind:
            bodies = tuple((bytes(d), int(n)) for _, d, n in chosen)
            return SpoolBatch(int(chosen[-1][0]), len(chosen), None, bodies)
        import pandas as pd

        from meterwatch.core.schema import with_time_columns

        frames = [decode_frame(d) for _, d, _ in chosen]
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        normalize = self._normalize or with_time_columns
        return SpoolBatch(int(chosen[-1][0]), len(chosen), normalize(frame))

    def remove_through(self, last_seq: int, *, durable: bool = True) -> None:
        """Delete every batch with ``seq <= last_seq`` (after the store stored them).

        ``durable=False`` skips this commit's own fsync (WAL, ``synchronous=NORMAL`` for it;
        the next append's fsync covers it): a crash right after may bring the deleted batches
        back, to be written again. Only for records whose replay is harmless (readings: InfluxDB
        overwrites the same point, the embedded store skips a repeat).
        """
        with self._lock:
            try:
                if not durable:
                    self._con.execute("PRAGMA synchronous=NORMAL")
                self._con.execute("BEGIN IMMEDIATE")
                gone = self._con.execute(
                    "SELECT count(*), coalesce(sum(rows), 0), coalesce(sum(nbytes), 0) "
                    "FROM batches WHERE seq <= ?",
                    (last_seq,),
                ).fetchone()
                self._con.execute("DELETE FROM batches WHERE seq <= ?", (last_seq,))
                oldest = self._con.execute("SELECT min(created_at) FROM batches").fetchone()[0]
                self._con.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._con.in_transaction:
                    self._con.execute("ROLLBACK")
                raise StorageError(f"spool {self.file}: delete failed: {exc}") from exc
            finally:
                if not durable:
                    self._con.execute("PRAGMA synchronous=FULL")  # appends stay fsynced
            self._batches -= int(gone[0])
            self._rows -= int(gone[1])
            self._bytes -= int(gone[2])
            self._oldest = float(oldest) if oldest is not None else None

    def close(self) -> None:
        with self._lock:
            try:
                self._con.close()
            except sqlite3.Error:
                pass


def read_pending(
    file: Path, normalize: Callable[[pd.DataFrame], pd.DataFrame] | None = None
) -> pd.DataFrame | None:
    """Everything waiting in the spool ``file``, oldest first, left in place (a backup); None
    when there is nothing. A read-only connection in one read transaction: the process that owns
    the spool may append and drain meanwhile."""
    if not file.exists():
        return None
    try:
        con = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            cols = {r[1] for r in con.execute("PRAGMA table_info(batches)").fetchall()}
            kind = "encoded" if "encoded" in cols else "0"
            blobs = con.execute(f"SELECT data, {kind} FROM batches ORDER BY seq").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise StorageError(f"spool {file}: read failed: {exc}") from exc
    if not blobs:
        return None
    import pandas as pd

    from meterwatch.core.schema import with_time_columns
    from meterwatch.storage.line_protocol import decode_readings

    normalize = normalize or with_time_columns
    # Batches spooled for InfluxDB are line protocol already (storage.line_protocol).
    frames = [decode_readings(bytes(d)) if enc else decode_frame(d) for d, enc in blobs]
    return normalize(pd.concat(frames, ignore_index=True))


async def drain_forever(
    drain_once: Callable[[], Awaitable[int]],
    wake: asyncio.Event,
    closing: Callable[[], bool],
    *,
    interval_s: float,
    backoff_cap_s: float,
    rng: random.Random,
    after_round: Callable[[], None] | None = None,
) -> None:
    """Drain a spool into its store until ``closing()``: on ``wake`` or every ``interval_s``,
    ``drain_once`` until it returns 0; while it raises StorageError, back off exponentially
    with jitter (uniform in [c/2, c], c = ``interval_s`` x 2^failures capped at
    ``backoff_cap_s``). ``after_round`` runs after each round (gauges)."""
    delay = interval_s
    failures = 0
    while not closing():
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except TimeoutError:
            pass
        wake.clear()
        if closing():
            return
        try:
            while not closing() and await drain_once():
                pass
            failures, delay = 0, interval_s
        except StorageError:
            failures += 1
            ceiling = min(backoff_cap_s, interval_s * 2**failures)
            delay = rng.uniform(ceiling / 2, ceiling)
        if after_round is not None:
            after_round()
