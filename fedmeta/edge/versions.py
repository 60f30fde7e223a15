"""Published meta-models: how the back-end writes them and how a front-end takes one.

A publish folder holds one sub-folder per version, ``v000003/`` (the round it was taken
after), each with the checkpoint (``checkpoint.pt``), its ONNX export
(``fedmeta.export.onnx_export``: ``body.onnx``, ``head.onnx``, ``head.npz``,
``meta_model.json``, ``adapt_onnx.py``) and ``manifest.json`` (version, round, the
SHA-256 of every other file); and ``latest.json``, naming the newest version.

``publish`` writes a version into a hidden temporary folder, renames it into place, then
replaces ``latest.json`` (a temporary file renamed over it): a reader sees the old version
or the new one, never part of one. ``stage`` copies a version into a front-end's own
folder and checks every copied file against the manifest, so a version copied to a device
by other means (scp, rsync, a sync client) is taken only once it is complete and intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

LATEST, MANIFEST, CHECKPOINT = "latest.json", "manifest.json", "checkpoint.pt"
FORMAT = "fedmeta-edge-version/1"


def version_name(version: int) -> str:
    """The folder of ``version``: ``v000003``."""
    return f"v{version:06d}"


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomically(data: dict[str, Any], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(data, indent=2) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def publish(checkpoint: Any, folder: str | Path, version: int, **about: Any) -> Path:
    """Write ``checkpoint`` (a ``fedmeta.checkpoint.Checkpoint``) and its ONNX export as
    ``version`` of ``folder`` (``about``: more manifest fields) and point ``latest.json``
    at it; return its folder. A version already published is never overwritten."""
    # torch and onnxscript: the back-end's, not the front-end's
    from ..export.onnx_export import export_onnx

    folder = Path(folder)
    final = folder / version_name(version)
    if final.exists():
        raise DataError(f"{final}: version {version} is already published there; publish "
                        f"to an empty folder (federation.publish_dir)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{final.name}."))
    except OSError as exc:
        raise DataError(f"{folder}: cannot publish there ({exc.strerror or exc})") from None
    try:
        checkpoint.save(tmp / CHECKPOINT)
        export_onnx(checkpoint, tmp)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        _write_json_atomically({"format": FORMAT, "version": version, **about,
                                "files": files}, tmp / MANIFEST)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from a front-end run by another user
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_json_atomically({"version": version, "folder": final.name,
                            "manifest_sha256": sha256(final / MANIFEST)}, folder / LATEST)
    return final


@dataclass(frozen=True)
class Pointer:
    """What ``latest.json`` says: the newest version and its folder."""

    version: int
    folder: str
    manifest_sha256: str


def latest(folder: str | Path) -> Pointer | None:
    """The newest published version of ``folder``, or ``None`` while none is."""
    path = Path(folder) / LATEST
    try:
        data = json.loads(path.read_text())
        pointer = Pointer(int(data["version"]), str(data["folder"]),
                          str(data["manifest_sha256"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a readable pointer to a version ({exc})") from None
    if pointer.folder != version_name(pointer.version):
        raise DataError(f"{path}: names folder {pointer.folder!r} for version "
                        f"{pointer.version}; expected {version_name(pointer.version)!r}")
    return pointer


def stage(folder: str | Path, pointer: Pointer, into: Path) -> dict[str, Any]:
    """Copy version ``pointer`` of ``folder`` into ``into`` (a new folder) and check every
    copied file against its manifest; return the manifest. A version that is incomplete,
    altered or unreadable is a ``DataError`` (and ``into`` is removed)."""
    source = Path(folder) / pointer.folder
    try:
        shutil.copytree(source, into)
        if sha256(into / MANIFEST) != pointer.manifest_sha256:
            raise DataError(f"{source / MANIFEST} does not match the SHA-256 that "
                            f"{LATEST} gives it: partially written or altered")
        manifest = json.loads((into / MANIFEST).read_text())
        if manifest.get("format") != FORMAT or manifest.get("version") != pointer.version:
            raise DataError(f"{source / MANIFEST}: not the manifest of version "
                            f"{pointer.version} (format {FORMAT})")
        for name, digest in manifest["files"].items():
            if not (into / name).is_file() or sha256(into / name) != digest:
                raise DataError(f"{source / name} is missing or does not match its "
                                f"SHA-256 in {MANIFEST}: partially written or corrupt")
        return manifest
    except OSError as exc:
        shutil.rmtree(into, ignore_errors=True)
        raise DataError(f"{source}: cannot read version {pointer.version} "
                        f"({exc.strerror or exc})") from None
    except (DataError, ValueError, KeyError, TypeError, AttributeError) as exc:
        shutil.rmtree(into, ignore_errors=True)
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{source / MANIFEST}: not a readable manifest ({exc})") from None
