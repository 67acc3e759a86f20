"""The project's exception tree, in one module. Library exceptions are translated into these at one boundary.

MeterWatchError
├── ConfigError            bad configuration (field path, value, what is allowed)
├── MapError               a register map that fails its load-time checks
├── RegistryError          a bad meters.csv row or column
├── DatasetError           a real data set that cannot be fetched, verified or read (carries ``dataset``)
├── ReadCancelled          a file read started ahead was cancelled before its result was taken
├── BaselineError          fitted baselines that cannot be read or do not fit the detectors given
├── ClusterError           the Dask cluster for analytics partitions is unreachable or failed (``address``, ``setting``)
├── ProtocolError          a payload or frame that cannot be decoded
│   ├── Dlt645FrameError       a DL/T 645 frame or value that breaks the format (carries offset)
│   └── Dlt645AbnormalReply    a DL/T 645 meter refused a read (address, control, status, di)
├── DeviceError            a meter did not answer properly (carries meter_id, address)
│   ├── DeviceTimeout
│   └── DeviceException    Modbus exception response (carries the exception code)
├── StorageError           the store refused or failed a write/read
│   ├── SpoolFullError         the spool is at its size bound; the append was refused
│   └── InfluxError            InfluxDB refused or failed a request (status, reason, setting)
├── AlertError             an alert operation was refused
│   ├── AlertNotFound          no alert with that id (carries ``alert_id``; also a KeyError)
│   ├── AlertStateError        the transition is not allowed from the alert's status
│   └── AuditError             the audit log cannot be read, written or verified
├── DeliveryError          a sink could not deliver a notification (carries ``sink``, ``retryable``)
└── AnalyticsWorkerError   the service's analytics worker process could not start, died on a run
                           and again on its retry, or was stopped (carries ``task``)

Every package imports its errors from here (``meterwatch.core.errors``).
"""

from __future__ import annotations

from pathlib import Path


class MeterWatchError(Exception):
    """Base of every error MeterWatch raises on purpose."""


class ConfigError(MeterWatchError):
    """Configuration is invalid. ``problems`` lists (field path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {msg}" for path, msg in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class MapError(MeterWatchError):
    """A register map failed validation; the message names the map, field and numbers."""

    def __init__(self, map_name: str, message: str, field: str | None = None):
        self.map_name = map_name
        self.field = field
        where = f"{map_name}.{field}" if field else map_name
        super().__init__(f"register map {where}: {message}")


class RegistryError(MeterWatchError):
    """The meter registry is invalid."""


class DatasetError(MeterWatchError):
    """A real consumption data set (simulators/real.py) could not be fetched, verified or read."""

    def __init__(self, dataset: str, message: str):
        self.dataset = dataset
        super().__init__(f"data set {dataset}: {message}")


class ReadCancelled(MeterWatchError):
    """A file read started ahead (``meterwatch.io.ReadAhead``) was cancelled before its
    result was taken."""


class BaselineError(MeterWatchError):
    """Fitted baselines that cannot be read, or that do not fit the detectors given them."""


class ClusterError(MeterWatchError):
    """The Dask cluster that runs analytics partitions cannot be used: its scheduler does not
    answer, has no workers, its workers lack this version of MeterWatch, or a partition keeps
    losing its worker. ``address`` is the scheduler's, ``setting`` what named it (e.g.
    ``--scheduler`` or ``analytics.scheduler``)."""

    def __init__(self, address: str, setting: str, message: str):
        self.address = address
        self.setting = setting
        super().__init__(f"{setting} {address}: {message}")


class ProtocolError(MeterWatchError):
    """A payload or frame could not be decoded."""


class DeviceError(MeterWatchError):
    """A meter failed to answer a read properly."""

    def __init__(self, meter_id: str, address: str, message: str):
        self.meter_id = meter_id
        self.address = address
        super().__init__(f"meter {meter_id} at {address}: {message}")


class DeviceTimeout(DeviceError):
    """No answer within the per-request timeout."""


class DeviceException(DeviceError):
    """The meter answered with a Modbus exception response."""

    def __init__(self, meter_id: str, address: str, code: int):
        self.code = code
        super().__init__(meter_id, address, f"Modbus exception code {code}")


class StorageError(MeterWatchError):
    """The store could not write or read."""


class SpoolFullError(StorageError):
    """The spool holds ``max_bytes`` or more; the append was refused (nothing was dropped)."""

    def __init__(self, path: Path, depth_bytes: int, max_bytes: int):
        self.path = path
        self.depth_bytes = depth_bytes
        self.max_bytes = max_bytes
        super().__init__(
            f"spool {path} is full ({depth_bytes} of storage.spool.max_bytes={max_bytes} bytes "
            "pending): the store is not keeping up or is unreachable"
        )


class InfluxError(StorageError):
    """InfluxDB refused or failed a request.

    ``status`` is the last HTTP status (None for a connection failure), ``reason`` the short cause
    (``http_503``, ``connection``, ``auth``, ``not_found`` ...), ``setting`` the configuration
    field to fix when the cause is configuration.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str = "",
        setting: str | None = None,
    ):
        self.status = status
        self.reason = reason
        self.setting = setting
        super().__init__(message)


# -- protocols ------------------------------------------------------------------------------


class Dlt645FrameError(ProtocolError):
    """A frame or value that breaks the format. ``offset`` is the byte where it was found."""

    def __init__(self, message: str, offset: int | None = None):
        self.offset = offset
        super().__init__(message)


class Dlt645AbnormalReply(ProtocolError):
    """The meter answered with an abnormal reply (D6 set); ``status`` is its error byte.

    ``reasons`` are the readable meanings of the set status bits; the codec that raises the
    error passes them from its table (``protocols.dlt645.error_reasons``: protocol vocabulary
    stays in ``protocols/``, and the ground imports nothing of the project). Without them the
    message shows the raw status bits.
    """

    #: Error-status bit: the meter has no such data item (``protocols.dlt645.ERR_NO_DATA``).
    NO_DATA_BIT = 0x02

    def __init__(
        self,
        address: str,
        control: int,
        status: int,
        di: str | None = None,
        reasons: list[str] | None = None,
    ):
        if reasons is None:
            reasons = [f"bit {b}" for b in range(8) if status & (1 << b)] or ["no error bit set"]
        self.address = address
        self.control = control
        self.status = status
        self.di = di
        self.reasons = reasons
        about = f" to read of DI {di}" if di else ""
        super().__init__(
            f"meter {address} abnormal reply {control:02X}H{about}: "
            f"error status {status:02X}H ({', '.join(self.reasons)})"
        )

    @property
    def no_data(self) -> bool:
        """True when the meter says it has no such data item."""
        return bool(self.status & self.NO_DATA_BIT)


# -- alerts ---------------------------------------------------------------------------------


class AlertError(MeterWatchError):
    """An alert operation was refused."""


class AlertNotFound(AlertError, KeyError):
    """No alert with this id in the feed."""

    def __init__(self, alert_id: str, where: str = ""):
        self.alert_id = alert_id
        self.where = where
        super().__init__(f"no alert with id {alert_id!r}" + (f" in {where}" if where else ""))

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AlertStateError(AlertError):
    """A transition that the alert's current status does not allow (e.g. acknowledge a resolved alert)."""

    def __init__(self, alert_id: str, status: str, action: str):
        self.alert_id = alert_id
        self.status = status
        self.action = action
        super().__init__(f"cannot {action} alert {alert_id}: it is already {status}")


class AuditError(AlertError):
    """The audit log could not be read, written or checked."""


class DeliveryError(MeterWatchError):
    """A sink could not deliver a notification (it will be retried). Carries the sink name."""

    def __init__(self, sink: str, message: str, *, retryable: bool = True):
        self.sink = sink
        self.retryable = retryable
        super().__init__(f"delivery to {sink}: {message}")


# -- service --------------------------------------------------------------------------------


class AnalyticsWorkerError(MeterWatchError):
    """An analytics worker process could not start, or died during ``task`` and again during
    its retry, or was stopped before it answered (the run is reported, never waited for)."""

    def __init__(self, task: str, message: str):
        self.task = task
        super().__init__(f"analytics worker, {task}: {message}")
