"""``fedmeta deploy``: certificates, SuperNode keys and a local federation of real Flower
processes (see docs/deployment.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_DIR = Path(".fedmeta-federation")


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
                    "Then: flwr run . <connection> --stream --run-config "
                    "\"federation.num_devices=N ...\". Stop it with `fedmeta deploy down`.")
    loc.add_argument("--nodes", type=int, required=True, help="how many SuperNodes")
    loc.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                     help=f"certificates, keys, logs and state (default: {DEFAULT_DIR})")
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
    d.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                   help=f"the federation's folder (default: {DEFAULT_DIR})")
    d.set_defaults(func=down)


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

    fed = up(args.dir, args.nodes, insecure=args.insecure, connection=args.connection,
             timeout=args.timeout)
    security = "INSECURE: without TLS and SuperNode authentication" if fed.insecure else \
        "with TLS and SuperNode authentication"
    n = len(fed.supernode_pids)
    small = " federation.min_train_devices=1" if n < 3 else ""
    print(f"SuperLink on {fed.address} {security}; {n} SuperNodes online; logs in "
          f"{Path(fed.folder) / 'logs'}\n"
          f"connection '{fed.connection}' written to {fed.flower_config}\n"
          f"run:  flwr run . {fed.connection} --stream --run-config "
          f"\"federation.num_devices={n} federation.num_held_out=1{small}\"\n"
          f"stop: fedmeta deploy down --dir {args.dir}")
    return 0


def down(args: argparse.Namespace) -> int:
    """``fedmeta deploy down``."""
    from ..deploy.federation import down as stop

    print(f"stopped {stop(args.dir)} processes")
    return 0
