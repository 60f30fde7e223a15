"""SuperLink connections in the Flower configuration file, where Flower 1.41 looks them up.

``flwr run . NAME`` and ``flwr supernode register KEY NAME`` dial the connection
``[superlink.NAME]`` of ``$FLWR_HOME/config.toml`` (``~/.flwr/config.toml`` by default):
its ``address`` (``host:port`` of the SuperLink's HTTP API), ``root-certificates`` (the
absolute path of the CA certificate that signed the SuperLink's) or ``insecure = true``.
Flower rewrites the file with ``tomli_w`` itself; so do we, touching only our table.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import tomli_w

from ..errors import DataError


def flower_home() -> Path:
    """``$FLWR_HOME``, else ``~/.flwr`` (as Flower resolves it)."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"{path}: cannot read the Flower configuration ({exc})") from exc


def _write(path: Path, data: dict) -> None:
    try:
        path.write_text(tomli_w.dumps(data))
    except OSError as exc:
        raise DataError(f"{path}: cannot write the Flower configuration ({exc})") from exc


def config_path() -> Path:
    """The Flower configuration file ``flwr`` reads now."""
    return flower_home() / "config.toml"


def create_config(flwr: Path, env: dict[str, str]) -> subprocess.Popen | None:
    """If there is no configuration file, start Flower's first-use creation of it
    (``flwr config list``, whose default ``local`` connection ``flwr run .`` needs); wait
    for the returned process before ``add_connection``."""
    if config_path().exists():
        return None
    return subprocess.Popen([str(flwr), "config", "list"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def add_connection(name: str, address: str, root_certificates: Path | None) -> Path:
    """Write ``[superlink.NAME]``: TLS with ``root_certificates``, else insecure; return
    the configuration file's path."""
    path = config_path()
    data = _read(path) if path.exists() else {}
    connection: dict[str, object] = {"address": address}
    if root_certificates is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(Path(root_certificates).resolve())
    data.setdefault("superlink", {})[name] = connection
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, data)
    return path


def remove_connection(name: str, path: Path) -> None:
    """Remove ``[superlink.NAME]`` from the configuration file ``path`` if it is there."""
    if not path.exists():
        return
    data = _read(path)
    if name in data.get("superlink", {}):
        del data["superlink"][name]
        _write(path, data)
