"""``fedmeta deploy``: certificates, SuperNode keys and a local federation of real Flower
processes (see docs/deployment.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

DIR_HELP = ("certificates, keys, logs and state (default: $XDG_STATE_HOME/fedmeta/federation, "
            "else ~/.local/state/fedmeta/federation: outside any source tree)")


def _folder(given: Path | None) -> Path:
    """``--dir``, else the per-user default outside the source tree."""
    from ..deploy.secrets import default_federation_dir

    return given if given is not None else default_federation_dir()


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fedmeta deploy`` and its commands."""
    p = sub.add_parser(
        "deploy", help="run the app on Flower's deployment engine (SuperLink, SuperNodes)",
        description="Bring the federated app to real Flower processes: make TLS "
                    "certificates and SuperNode keys, start or stop a local federation "
                    "on 127.0.0.1. TLS and SuperNode authentication are on unless "
                    "--insecure is given.")
    commands = p.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)

    c = commands.add_parser("certs", help="a local CA and a SuperLink certificate",
                            description="Write ca.crt/ca.key (a self-signed CA) and "
                                        "server.pem/server.key (the SuperLink's certificate "
                                        "for --host names) to --out. For trying TLS out; "
                                        "use your own PKI in production.")
    c.add_argument("--out", type=Path, default=Path("certs"), help="folder (default: certs)")
    c.add_argument("--host", dest="hosts", action="append", metavar="NAME_OR_IP",
                   help="an address SuperNodes and flwr dial (repeatable; default: "
                        "127.0.0.1, localhost, ::1)")
    c.add_argument("--days", type=int, default=365, help="validity (default: 365)")
    c.set_defaults(func=certs)

    k = commands.add_parser("keys", help="SuperNode authentication key pairs",
                            description="Write --nodes EC (P-384) key pairs in OpenSSH "
                                        "format, node-<i> and node-<i>.pub, to --out. The "
                                        "SuperLink's operator registers each .pub with "
                                        "`flwr supernode register`; each device keeps its "
                                        "private key.")
    k.add_argument("--out", type=Path, default=Path("keys"), help="folder (default: keys)")
    k.add_argument("--nodes", type=int, default=1, help="how many pairs (default: 1)")
    k.set_defaults(func=keys)

    loc = commands.add_parser(
        "local", help="start a SuperLink and N SuperNodes on 127.0.0.1",
        description="Start flower-superlink and --nodes flower-supernode processes on "
                    "127.0.0.1 (SuperNode i told --node-config \"partition-id=i "
                    "num-partitions=N\"), with TLS from a local CA and SuperNode "
                    "authentication (each node's key registered with `flwr supernode "
                    "register`), add the SuperLink connection to the Flower configuration "
                    "($FLWR_HOME/config.toml) and return once every SuperNode is online. "
                    "Then: flwr run . <connection> --stream (the ServerApp sizes the fleet "
                    "to the N SuperNodes). Stop it with `fedmeta deploy down`.")
    loc.add_argument("--nodes", type=int, required=True, help="how many SuperNodes")
    loc.add_argument("--dir", type=Path, default=None, help=DIR_HELP)
    loc.add_argument("--connection", default="fedmeta-local",
                     help="name of the SuperLink connection (default: fedmeta-local)")
    loc.add_argument("--insecure", action="store_true",
                     help="no TLS and no SuperNode authentication (testing only)")
    loc.add_argument("--timeout", type=float, default=120.0,
                     help="seconds to wait for every SuperNode (default: 120)")
    loc.set_defaults(func=local)

    d = commands.add_parser("down", help="stop the local federation",
                            description="Stop every process of the local federation in "
                                        "--dir and remove its SuperLink connection.")
    d.add_argument("--dir", type=Path, default=None,
                   help="the federation's folder (default: as for `fedmeta deploy local`)")
    d.set_defaults(func=down)

    ch = commands.add_parser(
        "check", help="can a SuperNode with these settings talk to this SuperLink?",
        description="Connect once to the SuperLink's Fleet API address, attempt a TLS "
                    "handshake and, with --root-certificates, verify its certificate for "
                    "that address: say whether a SuperNode started with these settings "
                    "(--insecure, or --root-certificates CA) can connect, and what to "
                    "change if not (a SuperNode with the wrong one only retries forever). "
                    "Exit status 0 if it fits, 2 if not or if nothing answers.")
    ch.add_argument("--superlink", required=True, metavar="HOST:PORT",
                    help="the address SuperNodes dial (flower-supernode --superlink)")
    mode = ch.add_mutually_exclusive_group()
    mode.add_argument("--root-certificates", type=Path, metavar="CA_CERT",
                      help="the CA certificate a SuperNode would trust")
    mode.add_argument("--insecure", action="store_true",
                      help="the SuperNode would dial without TLS")
    ch.set_defaults(func=check)

    r = commands.add_parser(
        "run", help="flwr run, with an exit status that says whether the run completed",
        description="Run `flwr run APP [CONNECTION] --stream ARGS...` (its log passes "
                    "through), then ask `flwr ls` for the run's final status: exit status 0 "
                    "if it is finished:completed, 3 otherwise, 2 if flwr fails (`flwr run` "
                    "exits 0 whatever the run's outcome). Arguments after -- go to flwr run, e.g. "
                    "fedmeta deploy run fedmeta-local -- --run-config \"federation.rounds=5\".")
    r.add_argument("connection", nargs="?", default=None,
                   help="the SuperLink connection (default: Flower's default, `local`)")
    r.add_argument("--app", type=Path, default=Path("."),
                   help="the Flower App's folder (default: .)")
    r.add_argument("flwr_args", nargs=argparse.REMAINDER,
                   help="arguments for flwr run, after --")
    r.set_defaults(func=run)


def certs(args: argparse.Namespace) -> int:
    """``fedmeta deploy certs``."""
    from ..deploy.tls import LOCAL_HOSTS, make_certificates

    files = make_certificates(args.out, args.hosts or LOCAL_HOSTS, args.days)
    print(f"CA certificate (give to SuperNodes and flwr): {files.ca_cert}\n"
          f"SuperLink certificate and key: {files.server_cert}, {files.server_key}")
    return 0


def keys(args: argparse.Namespace) -> int:
    """``fedmeta deploy keys``."""
    from ..deploy.node_keys import make_node_keys

    for public in make_node_keys(args.out, args.nodes):
        print(f"{public.with_suffix('')} (private), {public} (register this one)")
    return 0


def local(args: argparse.Namespace) -> int:
    """``fedmeta deploy local``."""
    from ..deploy.federation import up

    fed = up(_folder(args.dir), args.nodes, insecure=args.insecure, connection=args.connection,
             timeout=args.timeout)
    security = "INSECURE: without TLS and SuperNode authentication" if fed.insecure else \
        "with TLS and SuperNode authentication"
    print(f"SuperLink on {fed.address} {security}; {len(fed.supernode_pids)} SuperNodes "
          f"online; keys, certificates and logs in {fed.folder}\n"
          f"connection '{fed.connection}' written to {fed.flower_config}\n"
          f"run:  flwr run . {fed.connection} --stream\n"
          f"stop: fedmeta deploy down --dir {fed.folder}")
    return 0


def down(args: argparse.Namespace) -> int:
    """``fedmeta deploy down``."""
    from ..deploy.federation import down as stop

    print(f"stopped {stop(_folder(args.dir))} processes")
    return 0


def run(args: argparse.Namespace) -> int:
    """``fedmeta deploy run``."""
    from ..deploy.run import run_app

    connection, extra = args.connection, list(args.flwr_args)
    if connection is not None and connection.startswith("-"):  # `run -- --run-config ...`
        connection, extra = None, [connection, *extra]
    extra = extra[1:] if extra[:1] == ["--"] else extra
    print(run_app(args.app, connection, extra))
    return 0


def check(args: argparse.Namespace) -> int:
    """``fedmeta deploy check``."""
    from ..deploy.probe import check as probe

    print(probe(args.superlink, args.root_certificates, args.insecure))
    return 0
