"""Does a SuperLink speak TLS? One handshake on its port tells, and explains a mismatch.

A SuperNode started with ``--insecure`` against a SuperLink that serves TLS (or one given
``--root-certificates`` against a plain SuperLink) only logs "Connection attempt failed"
and retries forever; Flower never says why. ``check`` connects to ``host:port`` once,
attempts a TLS handshake (without trusting anything, to learn whether TLS is spoken at
all), and, given the CA certificate a SuperNode would trust, verifies the SuperLink's
certificate against it for ``host``. It raises ``FedmetaError`` with what to change when
the SuperNode's settings cannot work.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..errors import ConfigError, FedmetaError

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Probe:
    """What the SuperLink's port answered: TLS or not, and its certificate if TLS."""

    address: str
    tls: bool
    subject: str = ""
    issuer: str = ""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a pair."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--superlink", address, "HOST:PORT, e.g. 127.0.0.1:9092")
    return host, int(port)


def _connect(host: str, port: int) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=TIMEOUT_S)
    except OSError as exc:
        raise FedmetaError(f"nothing answers on {host}:{port} ({exc.strerror or exc}): is "
                           f"the SuperLink running, and is this its Fleet API address?"
                           ) from None


def probe(address: str) -> Probe:
    """Attempt a TLS handshake with ``address``, trusting nothing; say what it spoke."""
    host, port = split_address(address)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with _connect(host, port) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError):
            return Probe(address, tls=False)
    cert = x509.load_der_x509_certificate(der) if der else None
    return Probe(address, True, cert.subject.rfc4514_string() if cert else "",
                 cert.issuer.rfc4514_string() if cert else "")


def verify(address: str, ca_cert: Path) -> str | None:
    """Why the SuperLink's certificate does not verify against ``ca_cert`` for its host,
    or ``None`` if it does."""
    host, port = split_address(address)
    try:
        context = ssl.create_default_context(cafile=str(ca_cert))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("--root-certificates", str(ca_cert),
                          f"a readable PEM CA certificate ({exc})") from None
    with _connect(host, port) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return None
        except ssl.SSLCertVerificationError as exc:
            return exc.verify_message or str(exc)
        except (ssl.SSLError, OSError) as exc:
            return str(exc)


def check(address: str, root_certificates: Path | None = None,
          insecure: bool = False) -> str:
    """What a SuperNode dialling ``address`` with these settings will meet: a one-paragraph
    report if it can connect; ``FedmetaError`` saying what to change if it cannot."""
    if insecure and root_certificates is not None:
        raise ConfigError("--insecure", True, "not together with --root-certificates")
    found = probe(address)
    if not found.tls:
        if not insecure:
            raise FedmetaError(
                f"the SuperLink on {address} does not speak TLS (it was started with "
                f"--insecure): a SuperNode that dials it with TLS fails to connect; start "
                f"the SuperLink with --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile, or "
                f"(testing only) the SuperNode with --insecure")
        return f"{address} speaks plain HTTP, without TLS: --insecure fits (testing only)"
    if insecure:
        raise FedmetaError(
            f"the SuperLink on {address} speaks TLS (certificate {found.subject!r}, issued "
            f"by {found.issuer!r}): a SuperNode started with --insecure cannot talk to it "
            f"and only logs 'Connection attempt failed', retrying forever; pass "
            f"--root-certificates <the CA certificate that issued it> instead of --insecure")
    if root_certificates is None:
        return (f"{address} speaks TLS (certificate {found.subject!r}, issued by "
                f"{found.issuer!r}); give SuperNodes that CA's certificate with "
                f"--root-certificates (check it here with --root-certificates)")
    problem = verify(address, root_certificates)
    if problem:
        raise FedmetaError(
            f"the SuperLink on {address} speaks TLS, but its certificate ({found.subject!r}, "
            f"issued by {found.issuer!r}) does not verify against {root_certificates}: "
            f"{problem}; pass the CA certificate that issued it, for the address "
            f"SuperNodes dial")
    return (f"{address} speaks TLS and its certificate ({found.subject!r}) verifies "
            f"against {root_certificates}: --root-certificates {root_certificates} fits")
