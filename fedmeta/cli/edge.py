"""``fedmeta edge serve``: the edge front-end. It serves predictions of the newest
meta-model published in a folder (``federation.publish_dir`` of a federation), adapted to
the labelled examples it is sent, on a local HTTP port (``fedmeta.edge.serve``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fedmeta edge``."""
    p = sub.add_parser(
        "edge", help="the edge front-end: serve and adapt published meta-models",
        description="See docs/deployment.md, 'Front-end and back-end'.")
    commands = p.add_subparsers(dest="edge_command", metavar="COMMAND", required=True)
    s = commands.add_parser(
        "serve", help="serve the newest published meta-model over local HTTP",
        description="Watch --models (a federation's federation.publish_dir) and serve the "
                    "newest complete version there, adapted (head only) to the labelled "
                    "examples POSTed to /examples; POST /predict scores inputs, GET /status "
                    "says which version serves. Prints 'serving on http://HOST:PORT' once "
                    "it listens.")
    s.add_argument("--models", required=True, type=Path, metavar="DIR",
                   help="the folder the back-end publishes meta-models to")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    s.add_argument("--port", type=int, default=8787, help="port (8787; 0: a free one)")
    s.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                   help="how often to look for a newer version (1.0)")
    s.add_argument("--max-examples", type=int, default=500, metavar="N",
                   help="labelled examples kept for adaptation, the oldest dropped (500)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    from ..errors import ConfigError

    try:
        from ..edge.frontend import EdgeFrontend
        from ..edge.serve import serve
    except ImportError as exc:  # onnxruntime: the edge extra
        raise ConfigError("fedmeta edge", "serve", f"an environment with the edge extra: "
                          f"pip install 'fedmeta[edge]' ({exc})") from None

    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", args.port, "a port in [0, 65535] (0: a free one)")
    if not 0.01 <= args.poll <= 3600:
        raise ConfigError("--poll", args.poll, "seconds in [0.01, 3600]")
    if args.max_examples < 1:
        raise ConfigError("--max-examples", args.max_examples, "a positive integer")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the staged copies go too

    def ready(port: int) -> None:
        print(f"serving on http://{args.host}:{port}", flush=True)

    try:
        serve(EdgeFrontend(args.models, args.max_examples), args.host, args.port, args.poll,
              ready)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise ConfigError("--port", args.port, f"a port free on {args.host} ({exc})") from None
    return 0
