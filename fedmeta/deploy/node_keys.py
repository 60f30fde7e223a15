"""SuperNode authentication keys: an EC key pair per device, in OpenSSH format.

The SuperLink (``--enable-supernode-auth``) admits only SuperNodes whose public key was
registered with ``flwr supernode register KEY.pub CONNECTION``; a SuperNode proves it holds
the private key (``flower-supernode --auth-supernode-private-key KEY``). Flower 1.41 takes
NIST curves; these are P-384, as in Flower's documentation.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import ConfigError
from .secrets import private_folder, write_private


def make_node_key(private_path: str | Path) -> Path:
    """Write a fresh key pair: ``private_path`` (created with mode 0600) and
    ``private_path.pub``; a folder created for them is private (``secrets.private_folder``).

    Returns the public key's path.
    """
    private_path = Path(private_path)
    private_folder(private_path.parent)
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(private_path, key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()))
    public_path = private_path.with_name(private_path.name + ".pub")
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return public_path


def make_node_keys(folder: str | Path, count: int) -> list[Path]:
    """Write ``count`` key pairs ``node-<i>``/``node-<i>.pub`` into ``folder``; return the
    public keys' paths."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError("--nodes", count, "a positive number of key pairs")
    return [make_node_key(Path(folder) / f"node-{i}") for i in range(count)]
