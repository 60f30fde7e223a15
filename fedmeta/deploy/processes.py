"""Background processes of a local federation: started marked, found by mark, stopped.

Every process ``start`` launches carries ``FEDMETA_FEDERATION=<folder>`` in its
environment, and so does everything it spawns (Flower's SuperExec, ServerApp and ClientApp
processes), so ``marked(folder)`` finds them all, and only them, even from another
process than the one that started them. Finding by mark reads ``/proc`` (Linux).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

MARK = "FEDMETA_FEDERATION"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(command: Sequence[str], log: Path, env: Mapping[str, str],
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``command`` in its own session, stdout and stderr to ``log`` (a new one)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                                start_new_session=True)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def has_mark(pid: int, folder: Path) -> bool:
    """Whether ``pid`` is a live process carrying ``folder``'s mark."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARK}={folder}".encode() in environ and running(pid)


def marked(folder: Path) -> list[int]:
    """Live processes whose environment carries ``folder``'s mark."""
    return sorted(pid for pid in (int(e.name) for e in Path("/proc").glob("[0-9]*"))
                  if has_mark(pid, folder))


def wait_until(done: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``done`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def stop(pids: Sequence[int], grace: float = 10.0) -> None:
    """SIGTERM ``pids``, wait up to ``grace`` seconds for them to end, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in pids if running(p)]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if wait_until(lambda: not any(running(p) for p in alive), grace):
            return


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_text(log: Path) -> str:
    """What a log holds so far ("" if there is none)."""
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


def log_tail(log: Path, lines: int = 15) -> str:
    """The last lines of a log, for error messages."""
    return "\n".join(log_text(log).splitlines()[-lines:]) or "(empty)"
