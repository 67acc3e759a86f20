"""Fitted baselines: what detectors learn from history, kept so a run judges a day against them.

A detector that learns (``fit_window``; today the consumption profiles and the theft
references) gives a :class:`~meterwatch.analytics.base.FittedState`; a :class:`Baselines`
is one fit of a set of detectors: their states, the parameters they were fitted with, the
history it covered and a version. It serializes to one self-describing blob (a NumPy ``.npz``
archive with a JSON header), which the embedded store keeps as a row per version
(``storage.embedded``: table ``baselines``) and ``meterwatch baselines fit --out FILE`` writes
as a file. Partitions (transformer areas) fitted apart merge by concatenating their meters.

Fit weekly (or nightly, off-peak) over weeks of history; then every run judges its window --
one day -- against the kept baselines instead of reading the weeks again.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from meterwatch.analytics.base import Detector, FittedState, plain
from meterwatch.analytics.registry import detector_key
from meterwatch.core.errors import BaselineError

#: Format of the serialized blob (bumped when its layout changes).
FORMAT = 1
#: The quantities the learning detectors read: a history window for a fit needs only these
#: (``build_window(fields=LEARN_FIELDS)``), a fraction of the memory of every quantity.
LEARN_FIELDS: tuple[str, ...] = ("energy_import_kwh",)


@dataclass
class Baselines:
    """One fit: per detector key, its state and the parameters it was fitted with."""

    states: dict[str, FittedState]
    params: dict[str, dict[str, Any]]
    history_start: pd.Timestamp | None
    history_end: pd.Timestamp | None
    fitted_at: pd.Timestamp = field(default_factory=lambda: pd.Timestamp.now(tz="UTC"))
    #: Assigned by the store that keeps it (0: not stored yet).
    version: int = 0

    @property
    def meters(self) -> int:
        """Meters fitted (the largest count over the detectors)."""
        return max((len(s.ids) for s in self.states.values()), default=0)

    def describe(self) -> str:
        span = (
            f"{self.history_start:%Y-%m-%d} to {self.history_end:%Y-%m-%d}"
            if self.history_start is not None and self.history_end is not None
            else "no history"
        )
        return (
            f"baselines v{self.version} fitted {self.fitted_at:%Y-%m-%d %H:%MZ} on {span}: "
            f"{self.meters} meters, {', '.join(sorted(self.states)) or 'no detector'}"
        )

    # -- (de)serialization ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """One blob: the header (JSON) and every array (``.npz``, uncompressed: a daily run
        loads it in a fraction of the time a compressed one takes). An array two detectors
        share (the consumption rules fit one profile) or equal meter ids are kept once."""
        arrays: dict[str, np.ndarray] = {}
        aliases: dict[str, str] = {}
        seen: dict[int, str] = {}
        ids_seen: list[tuple[str, np.ndarray]] = []

        def put(name: str, a: np.ndarray) -> None:
            if id(a) in seen:
                aliases[name] = seen[id(a)]
                return
            seen[id(a)] = name
            arrays[name] = a

        header: dict[str, Any] = {
            "format": FORMAT,
            "params": plain(self.params),
            "history_start": _iso(self.history_start),
            "history_end": _iso(self.history_end),
            "fitted_at": _iso(self.fitted_at),
            "version": int(self.version),
            "detectors": {},
        }
        for key, st in self.states.items():
            ids = np.asarray(st.ids, dtype=str)
            same = next((n for n, other in ids_seen if np.array_equal(other, ids)), None)
            if same is None:
                ids_seen.append((f"{key}/ids", ids))
                arrays[f"{key}/ids"] = ids
            else:
                aliases[f"{key}/ids"] = same
            for name, a in st.per_meter.items():
                put(f"{key}/m/{name}", np.asarray(a))
            for name, a in st.shared.items():
                put(f"{key}/s/{name}", np.asarray(a))
            header["detectors"][key] = {
                "per_meter": sorted(st.per_meter),
                "shared": sorted(st.shared),
            }
        header["aliases"] = aliases
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "baselines") -> Baselines:
        return cls._read(io.BytesIO(data), source)

    @classmethod
    def _read(cls, file: Any, source: str) -> Baselines:
        """From ``file`` (a path or a binary file object) holding :meth:`to_bytes`."""
        try:
            with np.load(file, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                if header.get("format") != FORMAT:
                    raise BaselineError(
                        f"{source}: format {header.get('format')!r}, this version reads {FORMAT}"
                    )
                aliases = header.get("aliases", {})
                loaded: dict[str, np.ndarray] = {}

                def get(name: str) -> np.ndarray:
                    name = aliases.get(name, name)
                    if name not in loaded:
                        loaded[name] = z[name]
                    return loaded[name]

                states = {}
                for key, names in header["detectors"].items():
                    states[key] = FittedState(
                        np.asarray(get(f"{key}/ids"), dtype=object),
                        {n: get(f"{key}/m/{n}") for n in names["per_meter"]},
                        {n: get(f"{key}/s/{n}") for n in names["shared"]},
                    )
        except BaselineError:
            raise
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise BaselineError(f"{source}: not a baselines file ({exc})") from None
        return cls(
            states=states,
            params=header["params"],
            history_start=_ts(header["history_start"]),
            history_end=_ts(header["history_end"]),
            fitted_at=_ts(header["fitted_at"]) or pd.Timestamp.now(tz="UTC"),
            version=int(header.get("version", 0)),
        )

    def save(self, path: Any) -> None:
        from pathlib import Path

        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: Any) -> Baselines:
        from pathlib import Path

        try:
            fh = Path(path).open("rb")  # read member by member, not whole into memory first
        except OSError as exc:
            raise BaselineError(f"cannot read baselines {path}: {exc.strerror or exc}") from None
        with fh:
            return cls._read(fh, str(path))

    # -- use --------------------------------------------------------------------------------

    def apply(self, detectors: Sequence[Detector]) -> list[str]:
        """Load the kept state into each detector it was fitted for (same key and
        parameters); return the keys loaded. A detector whose parameters changed since the
        fit is refused (its baseline would not mean what its parameters say)."""
        loaded = []
        for d in detectors:  # loop over detectors (about 30)
            key = detector_key(type(d))
            if key not in self.states:
                continue
            fitted = self.params.get(key, {})
            now = plain(d.get_params())
            if fitted != now:
                changed = sorted(k for k in set(fitted) | set(now) if fitted.get(k) != now.get(k))
                raise BaselineError(
                    f"baselines v{self.version}: {key} was fitted with other parameters "
                    f"({', '.join(changed)}); fit again (meterwatch baselines fit)"
                )
            d.load_state(self.states[key])
            loaded.append(key)
        return loaded


def fit_baselines(w: Any, detectors: Iterable[Detector]) -> Baselines:
    """Fit every detector of ``detectors`` that learns on the history window ``w``."""
    states: dict[str, FittedState] = {}
    params: dict[str, dict[str, Any]] = {}
    for d in detectors:  # loop over detectors (about 30)
        d.fit_window(w)
        st = d.state()
        if st is not None:
            key = detector_key(type(d))
            states[key] = st
            params[key] = plain(d.get_params())
    first, last, n = w.reading_span()
    has = n > 0
    start = pd.Timestamp(int(first[has].min()), tz="UTC") if has.any() else None
    end = pd.Timestamp(int(last[has].max()), tz="UTC") if has.any() else None
    return Baselines(states, params, start, end)


def merge(parts: Sequence[Baselines]) -> Baselines:
    """Baselines of partitions (disjoint meters) fitted with the same detectors, as one."""
    if not parts:
        raise BaselineError("no baselines to merge")
    first = parts[0]
    for b in parts[1:]:
        if b.params != first.params:
            raise BaselineError("baselines fitted with other detector parameters cannot merge")
    states = {}
    for key in first.states:
        pieces = [b.states[key] for b in parts if key in b.states]
        per_meter = {
            n: np.concatenate([p.per_meter[n] for p in pieces]) for n in pieces[0].per_meter
        }
        states[key] = FittedState(
            np.concatenate([p.ids for p in pieces]), per_meter, dict(pieces[0].shared)
        )
    starts = [b.history_start for b in parts if b.history_start is not None]
    ends = [b.history_end for b in parts if b.history_end is not None]
    return Baselines(
        states, dict(first.params), min(starts) if starts else None, max(ends) if ends else None
    )


def _iso(t: pd.Timestamp | None) -> str | None:
    return None if t is None else pd.Timestamp(t).isoformat()


def _ts(text: str | None) -> pd.Timestamp | None:
    return None if text is None else pd.Timestamp(text)


class BaselineArchive:
    """Every fitted version, one file each (``v000001.npz`` ...) in ``directory``: the
    service's and ``meterwatch baselines fit``'s keeping place (``analytics.baselines_dir``).
    A new version is written to a temporary file, synced and renamed, so a crash never
    leaves a half version."""

    def __init__(self, directory: Any):
        from pathlib import Path

        self.dir = Path(directory)

    def versions(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.glob("v*.npz"):  # loop over kept versions (a few)
            try:
                out.append(int(p.stem[1:]))
            except ValueError:
                continue
        return sorted(out)

    def path(self, version: int) -> Any:
        return self.dir / f"v{version:06d}.npz"

    def save(self, baselines: Baselines, keep: int = 5) -> Baselines:
        """Keep ``baselines`` as the next version (set on it and returned); versions older
        than the last ``keep`` are removed (a version of a million meters is a few GB)."""
        import os

        self.dir.mkdir(parents=True, exist_ok=True)
        baselines.version = (self.versions() or [0])[-1] + 1
        final = self.path(baselines.version)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(baselines.to_bytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        for old in self.versions()[:-keep] if keep > 0 else []:  # a few old versions
            self.path(old).unlink(missing_ok=True)
        return baselines

    def load(self, version: int | None = None) -> Baselines:
        """A kept version (the latest by default)."""
        versions = self.versions()
        if not versions:
            raise BaselineError(
                f"no fitted baselines in {self.dir} (meterwatch baselines fit first)"
            )
        v = versions[-1] if version is None else int(version)
        if v not in versions:
            raise BaselineError(f"baselines v{v} not in {self.dir} (kept: {versions})")
        return Baselines.load(self.path(v))
