"""Availability traces: which rounds a device is on, read from a file.

A trace file has one line per device pattern: ``federation.rounds`` values, each ``0`` (off)
or ``1`` (on), written together (``0110``) or separated by commas or spaces; blank lines and
``#`` comments are skipped. The devices of a tier take the lines in turn.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError


def load_trace(path: str | Path, rounds: int, field: str = "fleet.tiers") -> np.ndarray:
    """A ``(patterns, rounds)`` boolean array, or ``ConfigError`` naming the file and line."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(field, str(path), f"a readable availability trace file ({exc})") \
            from None
    patterns = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        values = re.findall(r"[^\s,]+", line) if re.search(r"[\s,]", line) else list(line)
        where = f"{path} line {number}"
        if any(v not in ("0", "1") for v in values):
            raise ConfigError(field, where, f"availability values 0 or 1, got {line!r}")
        if len(values) != rounds:
            raise ConfigError(field, where, f"{rounds} values, one per round "
                                            f"(federation.rounds), got {len(values)}")
        patterns.append([v == "1" for v in values])
    if not patterns:
        raise ConfigError(field, str(path), "an availability trace with at least one line")
    return np.array(patterns, dtype=bool)
