"""Reading files in the canonical schema (CSV or Parquet, chosen by extension)."""

from __future__ import annotations

import csv
import itertools
import mmap
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meterwatch.core.cores import usable_cores
from meterwatch.core.errors import MeterWatchError, ReadCancelled
from meterwatch.core.memory import release_arrow_pool
from meterwatch.core.quantities import NO_TIME, READING_FIELDS

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported where a frame is made, not with this module: a ReadAhead starts parsing
# before its caller has imported pandas.


def read_readings_file(path: str | Path) -> pd.DataFrame:
    """Load a canonical readings file (plus ``collected_at``/``device_ts`` if present); errors
    name the file and the problem."""
    p = Path(path)
    with _read_errors(p):
        if p.suffix.lower() == ".parquet":
            df = _read_parquet(p)
        elif p.suffix.lower() == ".csv":
            df = _read_csv(p).frame()
        else:
            raise MeterWatchError(
                f"{p}: unknown readings format {p.suffix!r}; use .csv or .parquet"
            )
    return _as_readings(p, df)


class ReadAhead:
    """:func:`read_readings_file` with a CSV file's parsing started at once, on threads of its
    own: what the caller does meanwhile (its imports, pandas' among them, loading a registry,
    starting workers) runs while Arrow parses the file without the GIL, instead of before it.
    :meth:`result` waits for the parse and makes the readings frame of its columns (in the
    calling thread); :meth:`cancel` stops the parse at its next block and waits for it: call
    it when giving up before the result (``with ReadAhead(...)`` does). Other formats are read
    by :meth:`result` itself.

    Creating one imports Arrow's CSV reader only (not pandas): the parsing threads import
    nothing while the caller imports."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stop = threading.Event()
        self._columns: _Columns | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if self.path.suffix.lower() == ".csv":
            # The parse's imports, in the calling thread (the header is read as utf-8-sig
            # when a column is read again as text).
            import encodings.utf_8_sig  # noqa: F401

            import pyarrow.compute  # noqa: F401
            import pyarrow.csv  # noqa: F401

            self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._columns = _read_csv(self.path, self._stop)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> pd.DataFrame:
        if self._thread is None:
            return read_readings_file(self.path)
        self._thread.join()
        columns, error, self._columns, self._error = self._columns, self._error, None, None
        with _read_errors(self.path):
            if error is not None:
                raise error
            if columns is None:
                raise ReadCancelled(f"{self.path}: the read was cancelled or its result taken")
            df = columns.frame()
        return _as_readings(self.path, df)

    def cancel(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._columns = None

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


@contextmanager
def _read_errors(p: Path) -> Iterator[None]:
    """A file that cannot be opened or parsed as :class:`MeterWatchError` naming it."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise MeterWatchError(f"{p}: cannot read: {exc}") from exc


def _as_readings(p: Path, df: pd.DataFrame) -> pd.DataFrame:
    """A frame read from ``p`` in the canonical schema (:func:`with_time_columns`)."""
    from meterwatch.core.schema import with_time_columns

    missing = [c for c in ("meter_id", "ts") if c not in df.columns]
    if missing:
        raise MeterWatchError(f"{p}: missing column(s) {', '.join(missing)}")
    try:
        # Receipt and device times, when the file has them (backups do): the clock check
        # judges each read against its collected_at.
        return with_time_columns(df)
    except ValueError as exc:
        raise MeterWatchError(f"{p}: {_bad_time(p, df, exc)}") from exc


def _bad_time(p: Path, df: pd.DataFrame, exc: ValueError) -> str:
    """Where a ``ts`` column failed to parse: the first value that is not an ISO 8601 time,
    its row (and line of a CSV), how many more there are; else the parser's first line."""
    import numpy as np

    from meterwatch.core.schema import to_utc_coerce

    raw = df["ts"]
    try:
        unparsed = to_utc_coerce(raw).isna().to_numpy()
    except (ValueError, TypeError):
        unparsed = np.zeros(len(raw), dtype=bool)
    given = (raw.astype("string").str.strip() != "").fillna(False).to_numpy(dtype=bool)
    failed = unparsed & given
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not failed.any():
        return f"bad ts value: {first_line}"
    k = int(np.flatnonzero(failed)[0])
    line = f", line {k + 2}" if p.suffix.lower() == ".csv" else ""
    more = int(failed.sum()) - 1
    return f"bad ts value {raw.iloc[k]!r} in row {k + 1}{line} (not an ISO 8601 time)" + (
        f"; {more:,} more such row{'s' if more != 1 else ''}" if more else ""
    )


#: Columns of a Parquet file read (and decoded, on Arrow's threads) at a time.
PARQUET_COLUMNS_AT_ONCE = 4


def _read_parquet(p: Path) -> pd.DataFrame:
    """A Parquet file of readings: meter ids read as a dictionary (categorical: each id once,
    as the window takes them), times in ns, a few columns at a time, each handed to pandas
    as Arrow lets it go: the file's decoding buffers are those of a few columns, not of the
    whole table (a 194 MiB day peaks 280 MiB above where it starts, not 420; a daily-run
    worker's partitions peaked at 489-533 MiB, 505-570 at seven columns at a time), for about
    0.05 s more per such day. A file whose pandas metadata names index columns is read whole,
    its index kept."""
    import pandas as pd
    import pyarrow.parquet as pq

    # Arrow reads a text column as a dictionary and ignores the option for any other column.
    f = pq.ParquetFile(p, read_dictionary=["meter_id"])
    meta = f.schema_arrow.pandas_metadata or {}
    if any(isinstance(c, str) for c in meta.get("index_columns", [])):
        return _to_frame(_block_table(f.read(use_pandas_metadata=True)))
    names = f.schema_arrow.names
    columns: dict[str, pd.Series] = {}
    for k in range(0, len(names), PARQUET_COLUMNS_AT_ONCE):
        part = _to_frame(_block_table(f.read(columns=names[k : k + PARQUET_COLUMNS_AT_ONCE])))
        columns.update(part.items())
        del part
    return pd.DataFrame(columns, copy=False)


def _to_frame(table: Any) -> pd.DataFrame:
    """``table`` as a frame, its Arrow buffers freed as they are converted (the table and the
    frame never both hold every column) and given back to the system."""
    df = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    release_arrow_pool()
    return df


#: Bytes of CSV Arrow parses at a time (and types columns from: the first block).
CSV_BLOCK_BYTES = 32 << 20


def _read_csv(p: Path, stop: threading.Event | None = None) -> _Columns:
    """A CSV of readings as :class:`_Columns`, with Arrow's reader (several times pandas' own),
    in blocks parsed on every core; once ``stop`` is set, :class:`ReadCancelled` at the next
    block.

    Arrow types a column from its first block: a column that turns out to hold text further
    down (``"err"`` in a number column, a malformed time) is read again as text, and the
    canonical normalization counts and reports what is not a number or time."""
    import pyarrow as pa

    text: set[str] = {"meter_id"}
    for _ in range(64):  # at most once per column (a handful)
        try:
            columns = _read_csv_blocks(p, text, stop)
        except pa.ArrowInvalid as exc:
            col = _failed_column(str(exc), p)
            if col is None or col in text:
                raise ValueError(str(exc)) from None
            text.add(col)
            continue
        return columns
    raise ValueError("too many columns need reading as text")


def _read_csv_blocks(p: Path, text: set[str], stop: threading.Event | None = None) -> _Columns:
    """The file's columns (:class:`_Columns`), read in blocks of about
    :data:`CSV_BLOCK_BYTES` cut at line ends, each mapped and parsed by a thread of its own
    (one per core; Arrow releases the GIL), at most two blocks per thread in flight: the
    one-shot multithreaded reader's speed at the streaming reader's memory (the one-shot
    reader holds the whole file and its parsed columns at once). Each block is parsed from a
    memory map of the file (:func:`_mapped`), not from a copy. The header and the column
    types come from the first block; each block's meter ids become a dictionary and its times
    nanoseconds as soon as it is parsed, so the file's text never is all in memory. As each
    block comes in (in file order) this thread copies its columns into the file's arrays
    (:class:`_Columns`) and lets the block go: the conversion runs while the other blocks are
    parsed, not after, and the file's parsed columns never are all in memory beside its
    arrays. A CSV value with a line break inside quotes is not supported (nor by Arrow's own
    parallel reader)."""
    import pyarrow.csv as pacsv

    workers = usable_cores()
    fd = os.open(p, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        # Block k holds the lines that start in [k x B, (k + 1) x B).
        step = CSV_BLOCK_BYTES
        cuts = [0, *(_line_start(fd, k, size) for k in range(step, size, step)), size]
        spans = [(a, b) for a, b in itertools.pairwise(cuts) if b > a] or [(0, 0)]
        with _mapped(fd, *spans[0]) as first:
            raw = pacsv.read_csv(
                first,
                read_options=pacsv.ReadOptions(use_threads=False),
                convert_options=pacsv.ConvertOptions(column_types=_first_types(text)),
            )
        # Later blocks: the first one's column names and the types Arrow parsed it as.
        read_options = pacsv.ReadOptions(column_names=raw.column_names, use_threads=False)
        types = dict(zip(raw.schema.names, raw.schema.types, strict=True))
        convert_options = pacsv.ConvertOptions(column_types=types)
        first_block = _block_table(raw)
        # Rows the file may hold, from the first block's bytes a row: its arrays are made that
        # long at once (pages never written are never in memory), and grow if it was short.
        per_row = (spans[0][1] - spans[0][0]) / max(raw.num_rows, 1)
        del raw
        columns = _Columns(first_block.schema, int(size / max(per_row, 1.0) * 1.25) + 1024)
        columns.add(first_block)
        del first_block

        def parse(span: tuple[int, int]) -> Any:
            _check(stop)
            with _mapped(fd, *span) as block:
                parsed = pacsv.read_csv(
                    block, read_options=read_options, convert_options=convert_options
                )
            return _block_table(parsed)

        with ThreadPoolExecutor(workers) as pool:
            pending: deque[Future[Any]] = deque()
            for span in spans[1:]:
                _check(stop)
                pending.append(pool.submit(parse, span))
                if len(pending) >= 2 * workers:
                    columns.add(pending.popleft().result())
            while pending:
                columns.add(pending.popleft().result())
    finally:
        os.close(fd)
    return columns


def _numpy_of(array: Any, missing: float | int) -> Any:
    """A primitive Arrow array's values as numpy (a view of its buffer when none is missing,
    else a copy with ``missing`` where one is), from its buffers: Arrow's own ``to_numpy``
    imports pandas on its first call, which a read thread must not do while its caller
    imports."""
    import numpy as np
    import pyarrow as pa

    width = array.type.bit_width // 8
    kind = "f" if pa.types.is_floating(array.type) else "i"
    values = np.frombuffer(
        array.buffers()[1], dtype=f"{kind}{width}", count=len(array), offset=array.offset * width
    )
    if not array.null_count:
        return values
    valid = np.unpackbits(np.frombuffer(array.buffers()[0], np.uint8), bitorder="little")
    out = values.copy()
    out[valid[array.offset : array.offset + len(array)] == 0] = missing
    return out


class _Columns:
    """A CSV's columns, filled block by block in file order: the canonical quantities (float)
    and times (UTC, ns) into numpy arrays, meter ids as codes into one list of ids (each
    block's dictionary mapped onto it), any other column kept as Arrow chunks. The arrays are
    allocated once at a capacity (grown by half when a block would pass it); :meth:`frame`
    gives the frame of the rows filled, the arrays' memory its columns' (no copy)."""

    def __init__(self, schema: Any, capacity: int) -> None:
        import numpy as np
        import pyarrow as pa

        self.n = 0
        self.capacity = max(int(capacity), 1)
        self.kinds: dict[str, str] = {}
        self.arrays: dict[str, Any] = {}
        self.chunks: dict[str, list[Any]] = {}
        self.types = dict(zip(schema.names, schema.types, strict=True))
        self.ids: dict[str, int] = {}
        for name, typ in self.types.items():
            if name == "meter_id" and pa.types.is_dictionary(typ):
                self.kinds[name] = "ids"
                self.arrays[name] = np.empty(self.capacity, dtype=np.int32)
            elif pa.types.is_float64(typ):
                self.kinds[name] = "float"
                self.arrays[name] = np.empty(self.capacity, dtype=np.float64)
            elif typ == pa.timestamp("ns", "UTC"):
                self.kinds[name] = "time"
                self.arrays[name] = np.empty(self.capacity, dtype=np.int64)
            else:
                self.kinds[name] = "arrow"
                self.chunks[name] = []

    def add(self, block: Any) -> None:
        """Append ``block`` (a parsed block, after :func:`_block_table`)."""
        import numpy as np

        m = block.num_rows
        if self.n + m > self.capacity:
            self._grow(max(self.n + m, self.capacity + self.capacity // 2))
        for name, column in zip(block.column_names, block.columns, strict=True):
            kind = self.kinds[name]
            if kind == "arrow":
                self.chunks[name].extend(column.chunks)
                continue
            into = self.arrays[name][self.n : self.n + m]
            if kind == "ids":
                column = column.unify_dictionaries()  # one dictionary for the block's chunks
                if not column.num_chunks:
                    continue
                remap = np.fromiter(
                    (self._id(v) for v in column.chunk(0).dictionary.to_pylist()),
                    dtype=np.int32,
                    count=len(column.chunk(0).dictionary),
                )
                remap = np.append(remap, np.int32(-1))  # a missing id (index -1)
                index = np.concatenate([_numpy_of(c.indices, -1) for c in column.chunks])
                np.take(remap, index, out=into)
            else:
                # One copy a column and block (numpy lets the other threads run while it copies).
                missing = np.nan if kind == "float" else NO_TIME
                np.concatenate([_numpy_of(c, missing) for c in column.chunks], out=into)
        self.n += m

    def _id(self, value: str | None) -> int:
        if value is None:
            return -1
        return self.ids.setdefault(value, len(self.ids))

    def _grow(self, capacity: int) -> None:
        import numpy as np

        for name, a in self.arrays.items():
            bigger = np.empty(capacity, dtype=a.dtype)
            bigger[: self.n] = a[: self.n]
            self.arrays[name] = bigger
        self.capacity = capacity

    def frame(self) -> pd.DataFrame:
        """The rows filled, as the frame a read gives (meter ids categorical, times UTC)."""
        import pandas as pd
        import pyarrow as pa

        n = self.n
        data: dict[str, Any] = {}
        for name, kind in self.kinds.items():
            if kind == "ids":
                categories = pd.Index(list(self.ids), dtype=object)
                data[name] = pd.Categorical.from_codes(self.arrays[name][:n], categories)
            elif kind == "float":
                data[name] = self.arrays[name][:n]
            elif kind == "time":
                times = self.arrays[name][:n].view("datetime64[ns]")
                data[name] = pd.Series(times, copy=False).dt.tz_localize("UTC")
            else:
                chunked = pa.chunked_array(self.chunks[name], type=self.types[name])
                data[name] = chunked.to_pandas()
        self.arrays, self.chunks = {}, {}
        return pd.DataFrame(data, copy=False)


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise ReadCancelled


@contextmanager
def _mapped(fd: int, a: int, b: int) -> Iterator[Any]:
    """Bytes ``[a, b)`` of the file as an Arrow buffer over a read-only memory map of them,
    its pages mapped in at once (``MAP_POPULATE``): the file's text is parsed where the page
    cache holds it, never copied into (and faulted into) memory of the process's own, and
    the map is dropped once the block is parsed (Arrow copies what it keeps)."""
    import pyarrow as pa

    if b <= a:
        yield pa.py_buffer(b"")
        return
    start = a - a % mmap.ALLOCATIONGRANULARITY  # a map starts on a page boundary
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    m = mmap.mmap(fd, b - start, flags=flags, prot=mmap.PROT_READ, offset=start)
    view = memoryview(m)[a - start :]
    buf = pa.py_buffer(view)
    try:
        yield buf
    finally:
        del buf
        try:
            view.release()
            m.close()
        except BufferError:  # a parse error's traceback holds the buffer: unmapped with it
            pass


def _first_types(text: set[str]) -> dict[str, Any]:
    """The types the first block is read with: ``text`` columns as text, the canonical
    quantities as floats (a register of whole kWh in the first block would otherwise be typed
    as integers, and its first decimal further down would send the column to be read again as
    text), the rest inferred."""
    import pyarrow as pa

    types: dict[str, Any] = {c: pa.float64() for c in READING_FIELDS}
    types.update(dict.fromkeys(text, pa.string()))
    return types


def _line_start(fd: int, pos: int, size: int) -> int:
    """Where the first line starting at or after ``pos`` starts (``size`` if none does)."""
    at = pos - 1  # a line starts at pos when the byte before it ends one
    while at < size:
        chunk = os.pread(fd, 1 << 16, at)
        k = chunk.find(b"\n")
        if k >= 0:
            return at + k + 1
        at += len(chunk)
    return size


def _block_table(table: Any) -> Any:
    """A parsed block with meter ids as a dictionary (categorical in pandas: each id once) and
    times in ns: a fraction of the size, as the window takes them."""
    import pyarrow as pa

    names = table.column_names
    ids = table.schema.field("meter_id").type if "meter_id" in names else None
    if ids is not None and (pa.types.is_string(ids) or pa.types.is_large_string(ids)):
        k = names.index("meter_id")
        table = table.set_column(k, "meter_id", table.column(k).dictionary_encode())
    for col in ("ts", "collected_at", "device_ts"):
        if col in names and pa.types.is_timestamp(table.schema.field(col).type):
            k = names.index(col)
            table = table.set_column(k, col, table.column(k).cast(pa.timestamp("ns", "UTC")))
    return table


def _failed_column(message: str, p: Path) -> str | None:
    """The column an Arrow CSV conversion error names (``In CSV column #3: ...`` gives the
    position; the header names it)."""
    m = re.search(r"column #(\d+)", message)
    if m is None:
        return None
    with p.open(newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    k = int(m.group(1))
    return header[k] if k < len(header) else None


def _iso_z(values: pd.Series) -> pd.Series:
    """UTC timestamps as ISO 8601 text with ``Z`` (contracts §1); NaT stays empty."""
    import pandas as pd

    return pd.to_datetime(values, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_simulation(
    out: Path, readings: pd.DataFrame, registry: pd.DataFrame, labels: pd.DataFrame, fmt: str
) -> Path:
    """``readings.<fmt>``, ``meters.csv`` and ``labels.csv`` into ``out`` (times in text
    files as ISO 8601 with ``Z``); returns the readings path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"readings.{fmt}"
    if fmt == "csv":
        readings.assign(ts=_iso_z(readings["ts"])).to_csv(path, index=False)
    else:
        readings.to_parquet(path, index=False)
    registry.to_csv(out / "meters.csv", index=False)
    times = {c: _iso_z(labels[c]) for c in ("starts_at", "ends_at") if c in labels}
    labels.assign(**times).to_csv(out / "labels.csv", index=False)
    return path
