"""FLGo's phone traces (``flgo/simulator/phone_simulator.py`` of WwZzz/easyFL) as fleet
traces: availability from ``pings.csv`` (``fleet.trace_behaviour`` ending in ``.csv``) and
link rates from Ookla Speedtest CSVs (``fleet.trace_network``).

- ``pings.csv`` (Kaggle "Users Active Time Prediction"): rows ``id,timestamp`` (s), one per
  15 s slot in which a customer's app was active. As FLGo: timestamps are shifted so the
  first row's is 0, the period is the last shifted timestamp, and a customer is on at ``t``
  iff it has a ping at slot ``(t mod period)`` rounded down to a multiple of 15 s. Each run
  of pings 15 s apart becomes one window ``[first, last + 15)`` of a ``Behaviour``; customers
  are ordered by their number of pings, most first (FLGo's ``HIGH``), ties by id.
- Ookla CSVs (Kaggle "Speedtest by Ookla"): per country (``Name``) and quarter,
  ``Avg. Avg U Kbps`` and ``Avg. Avg D Kbps``; a file is mobile if its name says
  ``mobile``, else fixed. As FLGo: each country's rates are averaged over the rows of its
  kind; the entries are the fixed countries by name, then the mobile ones.

Device ``d`` takes the ``d mod n``-th customer or entry (``traces.trace_clients``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .traces import Behaviour

SLOT_S = 15  # FLGo's ping slot, s
PINGS = ("id", "timestamp")
OOKLA = ("Name", "Avg. Avg U Kbps", "Avg. Avg D Kbps")


def _read(path: Path, field: str, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """``path``'s ``columns`` as strings (empty cells NaN), or ``ConfigError``."""
    try:
        frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except OSError as exc:
        raise ConfigError(field, str(path), f"{what} that can be read "
                                            f"({exc.strerror or exc})") from None
    except ValueError as exc:  # pandas' EmptyDataError and ParserError, bad bytes, NUL
        raise ConfigError(field, str(path), f"{what}: {exc}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(field, str(path), f"{what} with columns {list(columns)}; "
                                            f"missing {missing}")
    if frame.empty:
        raise ConfigError(field, str(path), f"{what} with at least one row")
    return frame[list(columns)]


def _row(file: Path, frame: pd.DataFrame, row: int, key: str) -> str:
    """Where a row is: the file, its line (header = 1) and its ``key`` column's value."""
    return f"{file}, line {row + 2} ({key} {frame[key].iloc[row]!r})"


def _numbers(frame: pd.DataFrame, column: str, file: Path, field: str, key: str,
             positive: bool) -> np.ndarray:
    """``column`` as floats (thousands separators dropped), or ``ConfigError`` naming the
    first row whose value is missing, not a number, negative or (``positive``) zero."""
    values = pd.to_numeric(frame[column].str.replace(",", "", regex=False),
                           errors="coerce").to_numpy(float)
    bad = ~np.isfinite(values) | ((values <= 0) if positive else (values < 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConfigError(field, _row(file, frame, row, key),
                          f"{column!r}: a number {'> 0' if positive else '>= 0'}, got "
                          f"{frame[column].iloc[row]!r}")
    return values


def _filled(frame: pd.DataFrame, column: str, file: Path, field: str, what: str) -> None:
    """``ConfigError`` naming the first row whose ``column`` is empty."""
    empty = np.flatnonzero(frame[column].isna())
    if empty.size:
        raise ConfigError(field, f"{file}, line {int(empty[0]) + 2}",
                          f"{column!r}: {what}, got an empty cell")


@lru_cache(maxsize=4)
def load_pings(path: str, field: str = "fleet.trace_behaviour") -> Behaviour:
    """FLGo's ``pings.csv`` as windows on the simulated clock (module docstring), or
    ``ConfigError`` naming the line at fault: a missing id, a timestamp that is not a number
    >= 0 or off the 15 s grid of the first row's, or pings spanning no time."""
    file = Path(path)
    frame = _read(file, field, PINGS, "FLGo's pings.csv (id,timestamp)")
    _filled(frame, "id", file, field, "a customer id")
    stamps = _numbers(frame, "timestamp", file, field, "id", positive=False)
    shifted = stamps - stamps[0]  # FLGo: the first row's timestamp is 0
    off = np.flatnonzero(shifted % SLOT_S != 0)
    if off.size:
        raise ConfigError(field, _row(file, frame, int(off[0]), "id"),
                          f"'timestamp': the first row's ({stamps[0]:g}) plus a multiple of "
                          f"{SLOT_S} s (FLGo looks pings up by slot), got {stamps[off[0]]:g}")
    period = float(shifted.max())
    if period <= 0:
        raise ConfigError(field, path, "pings later than the first row's (the last one, "
                                       "after the first, is the period)")
    numeric = pd.to_numeric(frame["id"], errors="coerce")
    ids = numeric if numeric.notna().all() else frame["id"]
    counts = ids.value_counts().rename_axis("id").reset_index(name="pings")
    order = counts.sort_values(["pings", "id"], ascending=[False, True])["id"]
    rank = pd.Series(np.arange(len(order)), index=order.to_numpy())
    pings = pd.DataFrame({"rank": ids.map(rank).to_numpy(), "t": shifted})
    pings = pings.drop_duplicates().sort_values(["rank", "t"])
    who, t = pings["rank"].to_numpy(), pings["t"].to_numpy(float)
    first = np.r_[True, (who[1:] != who[:-1]) | (np.diff(t) != SLOT_S)]  # a window starts
    last = np.r_[first[1:], True]
    # closed windows [first, just below last + 15]: on iff the ping's slot holds t mod period
    ends = np.nextafter(t[last] + SLOT_S, -np.inf)
    windows = np.bincount(who[first], minlength=len(order))
    offsets = np.concatenate([[0], np.cumsum(windows)]).astype(np.int64)
    return Behaviour(t[first], ends, offsets, np.full(len(order), period))


@dataclass(frozen=True)
class Network:
    """Per entry (fixed countries by name, then mobile): upload and download, kbit/s."""

    up_kbps: np.ndarray
    down_kbps: np.ndarray

    def __len__(self) -> int:
        return len(self.up_kbps)


@lru_cache(maxsize=4)
def load_network(path: str, field: str = "fleet.trace_network") -> Network:
    """Ookla Speedtest CSVs (one file, or every ``*.csv`` in a folder) averaged per country
    and kind (module docstring), or ``ConfigError`` naming the file and line at fault: a
    missing column or country, a rate that is not a number > 0."""
    root = Path(path)
    files = sorted(root.glob("*.csv")) if root.is_dir() else [root] if root.exists() else []
    if not files:
        raise ConfigError(field, path, "an Ookla Speedtest CSV, or a folder holding some "
                                       "(*.csv); " + ("this folder has none" if root.is_dir()
                                                      else "no such file or folder"))
    parts = []
    for file in files:
        frame = _read(file, field, OOKLA, "an Ookla Speedtest CSV")
        _filled(frame, "Name", file, field, "a country")
        rates = [_numbers(frame, c, file, field, "Name", positive=True) for c in OOKLA[1:]]
        parts.append(pd.DataFrame({"mobile": "mobile" in file.name.lower(),
                                   "name": frame["Name"].str.strip(), "up": rates[0],
                                   "down": rates[1]}))
    means = pd.concat(parts).groupby(["mobile", "name"], sort=True)[["up", "down"]].mean()
    return Network(means["up"].to_numpy(), means["down"].to_numpy())
