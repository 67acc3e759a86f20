"""Delivers alert changes to sinks through the persistent outbox, retrying with backoff.

The dispatcher is an AlertManager listener: ``dispatcher(event, alert)`` writes one outbox
row per interested sink (durably, before returning) and wakes a background thread, which
sends due rows in order. A failure schedules a retry after ``initial_s · 2^(attempt-1)``
(capped at ``max_s``) with ±``jitter`` random spread; a row still undelivered after
``give_up_after_s`` (or refused as not retryable, e.g. HTTP 400) is marked failed, logged
once and counted. Later changes of the same alert wait for an earlier one that is being
retried (per sink), so a receiver never sees "resolved" before "firing". A failure also
pauses the whole sink until that retry is due (failures are nearly always sink-wide: broker
or server down), so an outage costs one attempt per backoff step, not one per queued row.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from meterwatch.alerts.delivery.outbox import OUTBOX_FILE, Notification, Outbox
from meterwatch.alerts.delivery.sinks import Sink
from meterwatch.alerts.model import Alert
from meterwatch.core.errors import DeliveryError

log = logging.getLogger(__name__)


class Dispatcher:
    """Persistent, retried, per-sink-ordered delivery of alert notifications."""

    def __init__(
        self,
        state_dir: str | Path,
        sinks: Iterable[Sink],
        *,
        initial_s: float = 1.0,
        max_s: float = 300.0,
        jitter: float = 0.2,
        give_up_after_s: float = 86400.0,
        poll_s: float = 1.0,
        keep_delivered_s: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        self.sinks: dict[str, Sink] = {}
        for sink in sinks:
            if sink.name in self.sinks:
                raise ValueError(f"two delivery sinks named {sink.name!r}")
            self.sinks[sink.name] = sink
        self.outbox = Outbox(Path(state_dir) / OUTBOX_FILE)
        self.initial_s, self.max_s, self.jitter = initial_s, max_s, jitter
        self.give_up_after_s = give_up_after_s
        self.poll_s = poll_s
        #: delivered rows older than this are purged (hourly); a change is never notified again
        #: that late, so the purge cannot let a duplicate through
        self.keep_delivered_s = keep_delivered_s
        self._last_purge = 0.0
        self.clock = clock
        self.rng = rng or random.Random()
        self.counters: dict[str, Counter[str]] = {name: Counter() for name in self.sinks}
        self.skipped_quiet = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()  # sinks whose outage was logged (log once, count rest)
        self._paused_until: dict[str, float] = {}  # sink → clock() of its next attempt

    # -- listener -----------------------------------------------------------------------

    def __call__(self, event: str, alert: Alert) -> None:
        """AlertManager listener: persist the notification for every interested sink."""
        if getattr(alert, "quiet", None) or getattr(alert, "inhibited_by", None):
            self.skipped_quiet += 1
            return
        self.enqueue(event, alert.to_json())

    def enqueue(self, event: str, alert: dict[str, Any]) -> int:
        """Persist one notification per interested sink; return the number of new rows."""
        sinks = [name for name, s in self.sinks.items() if event in s.events]
        if not sinks:
            return 0
        added = self.outbox.enqueue(alert, event, sinks, self.clock())
        self._wake.set()
        return added

    def seed(self, active: list[dict[str, Any]]) -> None:
        """Tell sinks that keep state (Alertmanager refresh) which alerts fire at start-up."""
        loud = [a for a in active if not a.get("quiet") and not a.get("inhibited_by")]
        for sink in self.sinks.values():
            seed = getattr(sink, "seed", None)
            if seed is not None:
                seed(loud)

    # -- background thread ----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alert-delivery", daemon=True)
        self._thread.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Try to deliver what is due for up to ``drain_s``, then stop; the rest stays queued.

        The outbox stays open: a change notified after ``stop`` is still persisted and is
        delivered by the next start (nothing is lost while the service shuts down).
        """
        if self._thread is None:
            return
        if drain_s > 0:
            self.flush(drain_s)
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._thread = None
        for name, s in self.stats().items():
            # one line per sink at shutdown; what is left is delivered by the next start
            level = logging.WARNING if s["pending"] or s["failed"] else logging.INFO
            log.log(
                level,
                "alert delivery to %s: %d delivered, %d retried, %d failed, %d pending",
                name,
                s["delivered"],
                s["retried"],
                s["failed"],
                s["pending"],
            )
        for sink in self.sinks.values():
            try:
                sink.close()
            except Exception as exc:  # a sink that fails to close must not block the others
                log.warning("closing delivery sink %s: %r", sink.name, exc)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until nothing is due (every row delivered, failed, or waiting for a retry)."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while time.monotonic() < deadline:
            if not self._due_any():
                return True
            with self._idle:
                self._idle.wait(0.05)
        return not self._due_any()

    def _due_any(self) -> bool:
        now = self.clock()
        return any(self._sendable(name, now) for name in self.sinks)

    def _sendable(self, name: str, now: float) -> list[Notification]:
        """Due rows of a sink, in order, skipping later rows of an alert whose earlier row waits."""
        if self._paused_until.get(name, 0.0) > now:
            return []
        waiting: set[str] = set()
        out = []
        for note, next_at in self.outbox.pending(name):
            if note.fingerprint in waiting:
                continue
            if next_at > now:
                waiting.add(note.fingerprint)
                continue
            out.append(note)
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                if time.monotonic() - self._last_purge > 3600.0:
                    self._last_purge = time.monotonic()
                    self.outbox.purge_delivered(self.keep_delivered_s, self.clock())
            except Exception:  # keep delivering: one bug must not stop every notification
                log.exception("alert delivery loop")
            with self._idle:
                self._idle.notify_all()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def run_once(self) -> int:
        """Send every due notification once; return how many were delivered."""
        delivered = 0
        for name, sink in self.sinks.items():
            if self._stop.is_set():
                break
            for note in self._sendable(name, self.clock()):
                if self._stop.is_set():
                    break
                outcome = self._attempt(sink, note)
                if outcome == "delivered":
                    delivered += 1
                elif outcome == "retry":
                    break  # the sink is paused until this row's retry is due
            tick = getattr(sink, "tick", None)
            if tick is not None:
                tick()
        return delivered

    def _attempt(self, sink: Sink, note: Notification) -> str:
        """Send once; return "delivered", "retry" (scheduled) or "failed" (given up)."""
        counters = self.counters[sink.name]
        try:
            try:
                sink.send(note)
            except DeliveryError:
                raise
            except (
                Exception
            ) as bug:  # a sink bug: counted and retried like an outage, not a loop crash
                log.exception(
                    "delivery sink %s raised %r (a bug: sinks raise DeliveryError)", sink.name, bug
                )
                raise DeliveryError(sink.name, f"unexpected {bug!r}") from bug
        except DeliveryError as exc:
            now = self.clock()
            age = now - note.created_at
            if not exc.retryable or age >= self.give_up_after_s:
                self.outbox.mark_failed(note.seq, now, str(exc))
                counters["failed"] += 1
                log.error("gave up delivering %s to %s: %s", note.key, sink.name, exc)
                return "failed"
            delay = self.backoff(note.attempts + 1)
            self.outbox.mark_retry(note.seq, now + delay, str(exc))
            self._paused_until[sink.name] = now + delay
            counters["retried"] += 1
            if sink.name not in self._failing:
                self._failing.add(sink.name)
                log.warning("%s; retrying with backoff (later failures are counted)", exc)
            return "retry"
        self.outbox.mark_delivered(note.seq, self.clock())
        counters["delivered"] += 1
        if sink.name in self._failing:
            self._failing.discard(sink.name)
            log.info("delivery to %s works again", sink.name)
        return "delivered"

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, capped, jittered."""
        base = min(self.max_s, self.initial_s * 2 ** (attempt - 1))
        return base * (1.0 + self.jitter * (2.0 * self.rng.random() - 1.0))

    # -- reporting ----------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Per sink: this process's counters (delivered, retried, failed) and the outbox's
        persistent totals (``pending`` and ``total_delivered``/``total_failed``)."""
        persisted = self.outbox.counts()
        out: dict[str, dict[str, int]] = {}
        for name in self.sinks:
            c = self.counters[name]
            p = persisted.get(name, {})
            out[name] = {
                "delivered": c["delivered"],
                "retried": c["retried"],
                "failed": c["failed"],
                "pending": p.get("pending", 0),
                "total_delivered": p.get("delivered", 0),
                "total_failed": p.get("failed", 0),
            }
        return out
