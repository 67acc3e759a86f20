"""Analytics partitions on a Dask distributed cluster (``analyze --scheduler``, ``--workers``).

:class:`DaskRunner` is a :class:`~meterwatch.analytics.partition.Runner`: each partition (an
Arrow table and its registry slice) is scattered straight to a worker and run there as one task,
at most ``in_flight`` at a time, so the client, the scheduler and the workers each hold a bounded
number of partitions. The scheduler only sees small task messages.

When a worker dies (killed, out of memory, its machine gone):

* a partition it was *running* whose input lives elsewhere is rescheduled by the scheduler on
  another worker, up to ``distributed.scheduler.allowed-failures`` times (Dask's default 3);
  beyond that the task fails with ``KilledWorker``;
* a partition whose *input* it held is lost with it (scattered data has no recipe): the runner
  scatters that partition again and resubmits it, within the same bound.

Either way each partition's result is taken once, so the findings equal those of one process.
Beyond the bound the run stops with a :class:`ClusterError` naming the partition.

:func:`connect` joins an existing cluster (checks that it answers within the timeout, has a
worker, and that every worker runs this version of MeterWatch); :func:`local_cluster` starts
one on this machine (worker processes on 127.0.0.1).
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from meterwatch import __version__
from meterwatch.analytics.partition import InProcess, Runner
from meterwatch.core.cores import usable_cores
from meterwatch.core.errors import ClusterError

if TYPE_CHECKING:
    from distributed import Client

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

#: Loggers of Dask that report worker deaths and restarts; the runner reports those itself.
DASK_LOGGERS = ("distributed", "dask")


class DaskRunner:
    """Runs ``map(fn, items, *args)`` as one Dask task per item (see the module docstring).

    ``setting`` names where the cluster came from (``--scheduler``, ``analytics.scheduler``,
    ``--workers``) for errors; ``on_retry(text)`` hears of every resubmitted partition.
    """

    def __init__(
        self,
        client: Client,
        *,
        setting: str = "--scheduler",
        in_flight: int | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.setting = setting
        self.in_flight = in_flight
        self.on_retry = on_retry or (lambda text: log.warning("%s", text))
        self.retries = 0

    @property
    def address(self) -> str:
        return str(self.client.scheduler.address)

    def _allowed_failures(self) -> int:
        import dask

        return int(dask.config.get("distributed.scheduler.allowed-failures"))

    def map(self, fn: Callable[..., R], items: Iterable[T], *args: Any) -> Iterator[R]:
        from distributed import as_completed

        client = self.client
        threads = sum(client.nthreads().values()) or 1
        limit = self.in_flight or 2 * threads  # every worker has its next partition queued
        allowed = self._allowed_failures()
        source = iter(enumerate(items))
        live: dict[Any, tuple[int, T, int, Any]] = {}
        done = as_completed(loop=client.loop, raise_errors=False)

        def what(n: int, item: T) -> str:
            index = getattr(item, "index", n)
            size = getattr(getattr(item, "meters", None), "__len__", None)
            return f"partition {index}" + (f" ({size()} meters)" if size else "")

        def submit(n: int, item: T, tries: int) -> None:
            for attempt in range(allowed + 1):
                try:
                    [data] = client.scatter([item], hash=False)
                    break
                except OSError as exc:  # the worker it went to closed (died) meanwhile
                    if attempt == allowed:
                        raise ClusterError(
                            self.address, self.setting, f"cannot place {what(n, item)}: {exc}"
                        ) from None
            fut = client.submit(fn, data, *args, pure=False)
            live[fut.key] = (n, item, tries, data)
            done.add(fut)

        def refill() -> None:
            while len(live) < limit:
                nxt = next(source, None)
                if nxt is None:
                    return
                submit(nxt[0], nxt[1], 0)

        refill()
        for fut in done:
            n, item, tries, data = live.pop(fut.key)
            if fut.status == "finished":
                result = fut.result()
                fut.release()
                data.release()
                yield result
            elif _killed(fut):
                raise ClusterError(
                    self.address,
                    self.setting,
                    f"{what(n, item)}: {allowed + 1} workers died running it "
                    "(distributed.scheduler.allowed-failures); out of memory? Smaller "
                    "partitions (--partition-meters) need less",
                )
            elif fut.status == "cancelled":
                # Its input was lost with the worker that held it: place it again.
                data.release()
                if tries >= allowed:
                    raise ClusterError(
                        self.address,
                        self.setting,
                        f"{what(n, item)} lost its worker {tries + 1} times "
                        "(distributed.scheduler.allowed-failures)",
                    )
                self.retries += 1
                self.on_retry(
                    f"{what(n, item)}: its worker died; running it again "
                    f"({tries + 1} of {allowed} retries)"
                )
                submit(n, item, tries + 1)
            else:
                fut.result()  # the partition's own error, as raised on the worker
            refill()


def _killed(fut: Any) -> bool:
    from distributed.scheduler import KilledWorker

    return fut.status == "error" and isinstance(fut.exception(), KilledWorker)


@contextmanager
def connect(address: str, *, timeout_s: float, setting: str) -> Iterator[Client]:
    """A client of the Dask scheduler at ``address``: it answers within ``timeout_s``, has a
    worker within ``timeout_s``, and every worker runs this MeterWatch version; else a
    :class:`ClusterError` naming ``setting`` and the address."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            address,
            setting,
            f"no Dask scheduler answered within {timeout_s:g} s ({type(exc).__name__}); "
            "is `dask scheduler` running there and the port open?",
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout_s)
        except (OSError, TimeoutError):
            raise ClusterError(
                address,
                setting,
                f"the scheduler has no worker (waited {timeout_s:g} s); start one with "
                f"`dask worker {address}`",
            ) from None
        check_workers(client, address, setting)
        yield client
    finally:
        client.close()


def check_workers(client: Client, address: str, setting: str) -> None:
    """Every worker has MeterWatch at this client's version, or a ClusterError naming them."""
    found = client.run(importlib.metadata.version, "meterwatch", on_error="return")
    wrong = {w: v for w, v in found.items() if v != __version__}
    if wrong:
        listed = ", ".join(
            f"{w} ({'not installed' if isinstance(v, BaseException) else v})"
            for w, v in sorted(wrong.items())
        )
        raise ClusterError(
            address,
            setting,
            f"every worker needs meterwatch {__version__} installed, as here: {listed}",
        )


@contextmanager
def local_cluster(workers: int) -> Iterator[Client]:
    """A Dask cluster of ``workers`` worker processes (one thread each) on 127.0.0.1, and its
    client; stopped on exit."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@contextmanager
def partition_runner(
    scheduler: str | None,
    workers: int,
    *,
    timeout_s: float = 10.0,
    setting: str = "--scheduler",
    on_retry: Callable[[str], None] | None = None,
) -> Iterator[tuple[Runner, str]]:
    """Where ``meterwatch analyze`` runs its partitions, and a phrase saying so: on the Dask
    cluster at ``scheduler``; else on a local Dask cluster of ``workers`` processes when
    ``workers`` > 1; else in this process (the default: for a small fleet, starting worker
    processes costs more than it saves), each partition's detectors on a thread per core
    this process may use. With Dask, worker deaths and retries are reported
    through ``on_retry``, once each; Dask's own logs of them only at DEBUG (``-v``)."""
    if (scheduler or workers > 1) and logging.getLogger().level > logging.DEBUG:
        for name in DASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if scheduler:
        with connect(scheduler, timeout_s=timeout_s, setting=setting) as client:
            n = len(client.nthreads())
            yield (
                DaskRunner(client, setting=setting, on_retry=on_retry),
                f"on the Dask cluster at {scheduler} ({n} worker{'s' if n != 1 else ''})",
            )
    elif workers > 1:
        with local_cluster(workers) as client:
            yield (
                DaskRunner(client, setting="--workers", on_retry=on_retry),
                f"on {workers} local Dask worker processes",
            )
    else:
        yield InProcess(threads=usable_cores()), "in this process"
