"""Where deployment secrets live and how they are written.

The local federation's CA key and SuperNode keys go, by default, outside any source tree:
``$XDG_STATE_HOME/fedmeta/federation`` (``~/.local/state/fedmeta/federation``). A folder
fedmeta creates for secrets is private (0700) and holds a ``.gitignore`` of ``*``, so git
never offers its keys for a commit, wherever ``--dir``/``--out`` put it. Private keys are
created with mode 0600: never readable by others, not even between creation and a chmod.
"""

from __future__ import annotations

import os
from pathlib import Path

GITIGNORE = "# written by fedmeta: private keys, never commit them\n*\n"


def state_dir() -> Path:
    """fedmeta's per-user state folder: ``$XDG_STATE_HOME/fedmeta``, else
    ``~/.local/state/fedmeta``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base).expanduser() / "fedmeta"


def default_federation_dir() -> Path:
    """Where ``fedmeta deploy local`` keeps its certificates, keys, logs and state."""
    return state_dir() / "federation"


def private_folder(folder: str | Path) -> Path:
    """``folder``, created if missing; a folder created here gets mode 0700 and a
    ``.gitignore`` that hides it from git (an existing folder is left as it is)."""
    folder = Path(folder)
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)
        (folder / ".gitignore").write_text(GITIGNORE)
    return folder


def write_private(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` created with mode 0600 (an old file there is
    replaced, not reused with its old mode)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
