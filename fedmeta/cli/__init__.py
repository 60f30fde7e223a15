"""The ``fedmeta`` command: one subcommand per module in this package."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from ..errors import FedmetaError

# Each module defines ``add_parser(subparsers)`` (which sets ``func``) for its subcommand.
SUBCOMMANDS = ("train", "evaluate", "data", "run", "rescore", "deploy", "export",
               "compress", "edge")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="fedmeta",
        description="Federated meta-learning on simulated fleets of edge devices.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedmeta`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FedmetaError as exc:
        print(f"fedmeta {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code  # 2: bad input; 3: a run that failed (fedmeta.errors)


if __name__ == "__main__":
    sys.exit(main())
