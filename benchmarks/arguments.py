"""The command-line check the benchmark and study scripts share."""

from __future__ import annotations

import argparse


def at_least_one(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 *names: str) -> None:
    """Refuse (exit 2, naming the option and the value) a count below 1; an option left
    unset (None) passes."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: an integer >= 1")
