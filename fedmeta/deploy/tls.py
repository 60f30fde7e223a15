"""A local certificate authority and a SuperLink certificate, for trying TLS out.

``make_certificates`` writes ``ca.crt``/``ca.key`` (a self-signed CA) and
``server.pem``/``server.key`` (the SuperLink's certificate, signed by that CA, valid for
``hosts``: IP addresses or DNS names the SuperNodes and ``flwr`` will dial). SuperNodes and
the ``flwr`` CLI trust the CA (``--root-certificates``, ``root-certificates``); the
SuperLink serves the certificate (``--ssl-certfile``, ``--ssl-keyfile``,
``--ssl-ca-certfile``). Keys are created with mode 0600 (``secrets.write_private``). For
production, use certificates from your own PKI instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError
from .secrets import private_folder, write_private

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA certificate and the SuperLink's certificate and key are."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> "TlsFiles":
        """The file names ``make_certificates`` writes in ``folder``."""
        return cls(folder / "ca.crt", folder / "server.pem", folder / "server.key")

    def exist(self) -> bool:
        """Whether all three files are there."""
        return all(p.is_file() for p in (self.ca_cert, self.server_cert, self.server_key))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmeta"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c in host for c in " /:@"):
                raise ConfigError("--host", host, "an IP address or a DNS name") from None
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))


def make_certificates(folder: str | Path, hosts: Sequence[str] = LOCAL_HOSTS,
                      days: int = 365) -> TlsFiles:
    """Write a fresh CA and a SuperLink certificate for ``hosts`` into ``folder``."""
    if not hosts:
        raise ConfigError("--host", list(hosts), "at least one IP address or DNS name")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError("--days", days, "a positive number of days")
    files = TlsFiles.in_folder(Path(folder))
    private_folder(files.ca_cert.parent)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedmeta local CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_subject_alt_names(hosts), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))

    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(files.ca_cert.with_suffix(".key"), ca_key)
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.server_key, key)
    return files
