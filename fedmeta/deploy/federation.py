"""A local federation on 127.0.0.1 with Flower's own commands, and its teardown.

``up`` starts ``flower-superlink`` (TLS with a local CA and SuperNode authentication,
unless ``insecure``), writes the SuperLink connection ``connection`` into the Flower
configuration, registers one key per SuperNode with ``flwr supernode register`` and starts
``flower-supernode`` ``i`` with ``--node-config "partition-id=i num-partitions=N"``; it
returns once every SuperNode is online. Then ``flwr run . <connection>`` runs the app on
it. ``down`` stops every process of the federation (SuperNodes, SuperLink and the
SuperExec, ServerApp and ClientApp processes they spawned) and removes the connection.

Everything lives in ``folder`` (by default outside the source tree,
``secrets.default_federation_dir()``; a folder created here is private and git-ignored):
``certs/``, ``keys/``, ``logs/`` (one log per process),
``homes/`` (each process's ``FLWR_HOME``, where it unpacks the app) and
``federation.json`` (ports, process ids, connection).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError, FedmetaError
from . import processes
from .flower_config import add_connection, create_config, remove_connection
from .node_keys import make_node_key
from .secrets import private_folder
from .tls import TlsFiles, make_certificates

HOST = "127.0.0.1"
DEFAULT_CONNECTION = "fedmeta-local"
STATE_FILE = "federation.json"
SUPERNODE_JOINED = "SuperNode ID:"  # what flower-supernode logs once the SuperLink admits it


@dataclass
class Federation:
    """A running local federation, as ``federation.json`` records it."""

    folder: str
    connection: str
    address: str
    insecure: bool
    superlink_pid: int
    supernode_pids: list[int] = field(default_factory=list)
    flower_config: str = ""

    def save(self) -> None:
        """Write ``federation.json``."""
        (Path(self.folder) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "Federation | None":
        """The federation recorded in ``folder``, or ``None``."""
        try:
            return cls(**json.loads((folder / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def flower_command(name: str) -> Path:
    """A Flower executable: beside this Python's, else on ``PATH``."""
    here = Path(sys.executable).with_name(name)
    found = here if here.is_file() else shutil.which(name)
    if not found:
        raise FedmetaError(f"cannot find Flower's `{name}` command; pip install flwr")
    return Path(found)


def _environment(folder: Path, home: Path | None = None) -> dict[str, str]:
    """Ours, marked with ``folder``, Flower's commands first on ``PATH`` (SuperLink and
    SuperNodes spawn ``flower-superexec`` by name), ``FLWR_HOME`` set to ``home``."""
    env = dict(os.environ)
    env[processes.MARK] = str(folder)
    env["PATH"] = os.pathsep.join([str(flower_command("flwr").parent), env.get("PATH", "")])
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


def _register(folder: Path, connection: str, public_keys: list[Path]) -> None:
    """``flwr supernode register KEY CONNECTION`` for every key, all at once."""
    env, flwr = _environment(folder), str(flower_command("flwr"))
    running = [subprocess.Popen([flwr, "supernode", "register", str(key), connection],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for key in public_keys]
    outputs = [proc.communicate(timeout=120)[0] for proc in running]
    failed = [(key, out) for key, proc, out in zip(public_keys, running, outputs)
              if proc.returncode != 0]
    if failed:
        key, out = failed[0]
        raise FedmetaError(f"flwr supernode register {key} {connection} failed:\n{out}")


def _fail(message: str, log: Path) -> None:
    raise FedmetaError(f"{message}; the end of {log}:\n{processes.log_tail(log)}")


def up(folder: str | Path, nodes: int, *, insecure: bool = False,
       connection: str = DEFAULT_CONNECTION, timeout: float = 120.0) -> Federation:
    """Start a SuperLink and ``nodes`` SuperNodes on 127.0.0.1; return once all are online."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ConfigError("--nodes", nodes, "a positive number of SuperNodes")
    if not connection or not all(c.isalnum() or c in "-_" for c in connection):
        raise ConfigError("--connection", connection, "a name of letters, digits, - and _")
    folder = private_folder(Path(folder).resolve())
    if processes.marked(folder):
        raise FedmetaError(f"a federation is already running in {folder}; stop it with "
                           f"`fedmeta deploy down --dir {folder}`")
    try:
        return _start(folder, nodes, insecure, connection, timeout)
    except BaseException:  # failed or interrupted: leave nothing running
        down(folder)
        raise


def _start(folder: Path, nodes: int, insecure: bool, connection: str,
           timeout: float) -> Federation:
    logs, homes = folder / "logs", folder / "homes"
    tls = None
    if not insecure:
        tls = TlsFiles.in_folder(folder / "certs")
        if not tls.exist():
            make_certificates(tls.ca_cert.parent)
    keys = [folder / "keys" / f"node-{i}" for i in range(nodes)]
    for key in keys:
        if not key.exists():
            make_node_key(key)

    port = processes.free_port(HOST)
    address = f"{HOST}:{port}"
    command = [str(flower_command("flower-superlink")), "--host", HOST, "--port", str(port),
               "--disable-runtime-dependency-installation"]
    command += ["--insecure"] if tls is None else [
        "--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key),
        "--ssl-ca-certfile", str(tls.ca_cert), "--enable-supernode-auth"]
    superlink = processes.start(command, logs / "superlink.log",
                                _environment(folder, homes / "superlink"), cwd=folder)
    federation = Federation(str(folder), connection, address, insecure, superlink.pid)
    federation.save()
    creating = create_config(flower_command("flwr"), _environment(folder))
    if not processes.wait_until(lambda: processes.listening(HOST, port)
                                or superlink.poll() is not None, timeout) \
            or superlink.poll() is not None:
        _fail("the SuperLink did not start", logs / "superlink.log")
    if creating is not None:
        creating.wait(timeout=120)
    federation.flower_config = str(add_connection(connection, address,
                                                  None if tls is None else tls.ca_cert))
    federation.save()

    if tls is not None:
        _register(folder, connection, [key.with_name(key.name + ".pub") for key in keys])
    for i, key in enumerate(keys):
        command = [str(flower_command("flower-supernode")), "--superlink", address,
                   "--port", str(processes.free_port(HOST)),
                   "--node-config", f"partition-id={i} num-partitions={nodes}"]
        command += ["--insecure"] if tls is None else [
            "--root-certificates", str(tls.ca_cert), "--auth-supernode-private-key", str(key)]
        node = processes.start(command, logs / f"supernode-{i}.log",
                               _environment(folder, homes / f"node-{i}"), cwd=folder)
        federation.supernode_pids.append(node.pid)
    federation.save()

    def joined(i: int) -> bool:  # the SuperLink activated it and gave it a node id
        return SUPERNODE_JOINED in processes.log_text(logs / f"supernode-{i}.log")

    def dead() -> int | None:
        return next((i for i, p in enumerate(federation.supernode_pids)
                     if not processes.running(p)), None)

    if not processes.wait_until(lambda: dead() is not None or all(map(joined, range(nodes))),
                                timeout) or dead() is not None:
        late = dead() if dead() is not None else next(i for i in range(nodes) if not joined(i))
        _fail(f"SuperNode {late} did not join within {timeout:.0f} s",
              logs / f"supernode-{late}.log")
    return federation


def down(folder: str | Path, grace: float = 10.0) -> int:
    """Stop every process of the federation in ``folder`` (SIGTERM, then SIGKILL after
    ``grace`` seconds) and remove its connection; return how many processes were stopped.
    """
    folder = Path(folder).resolve()
    stopped: set[int] = set()
    for _ in range(3):  # a process may spawn another while it stops
        alive = processes.marked(folder)
        if not alive:
            break
        processes.stop(alive, grace)
        stopped.update(alive)
    federation = Federation.load(folder)
    if federation is not None:
        if federation.flower_config:
            remove_connection(federation.connection, Path(federation.flower_config))
        (folder / STATE_FILE).unlink(missing_ok=True)
    return len(stopped)
