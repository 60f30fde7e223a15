"""What a federated run leaves in its folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .checkpoint import Checkpoint
from .config import Config
from .errors import ConfigError, DataError
from .plots import plot_run

FILES = ("results.csv", "summary.json", "config.json", "checkpoint.pt", "quality.png",
         "server_state.pt")


def write_run(out: Path, frame: pd.DataFrame, cfg: Config, checkpoint: Checkpoint,
              summary: dict[str, Any]) -> None:
    """Write ``FILES`` to ``out``.

    ``results.csv`` (the tidy table, no host times), ``summary.json`` (final held-out scores
    with 95% CIs, bytes, wall time), ``config.json`` (the resolved config),
    ``checkpoint.pt`` (read by ``fedmeta evaluate``) and ``quality.png``; the server state
    ``server_state.pt`` (for ``fedmeta run --resume``) is written after every round by the run.
    """
    fed = cfg.federation
    try:
        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / "results.csv", index=False, lineterminator="\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        checkpoint.save(out / "checkpoint.pt")
        plot_run(frame, out / "quality.png",
                 f"{fed.algorithm}: {fed.num_train} training, {fed.num_held_out} held-out "
                 f"devices")
    except OSError as exc:
        raise DataError(f"{out}: cannot write the run's outputs ({exc.strerror or exc})") \
            from exc


def run_files(out: Path) -> list[str]:
    """The ``FILES`` of a run that ``out`` already holds."""
    return [name for name in FILES if (out / name).exists()]


def claim(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready for a fresh run: refuse a folder holding another run's files
    unless ``overwrite``, which deletes them (only those: ``FILES``) first."""
    held = run_files(out)
    if not held:
        return
    if not overwrite:
        raise ConfigError("--out", str(out),
                          f"a folder without a run in it (it holds {', '.join(held)}): "
                          f"continue that run with --resume {out}, write to another folder, "
                          f"or replace it with --overwrite (fedmeta.simulate: resume=, "
                          f"overwrite=True)")
    try:
        for name in held:
            (out / name).unlink()
    except OSError as exc:
        raise DataError(f"{out}: cannot remove the old run's files ({exc.strerror or exc})") \
            from exc
