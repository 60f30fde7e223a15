"""``fedmeta deploy certs`` / ``keys`` and the Flower connection file, without processes:
the certificate chain verifies for the named hosts, keys load as Flower loads them, bad
input is a one-line error, and only our connection is added and removed."""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedmeta.cli import main
from fedmeta.deploy.flower_config import add_connection, remove_connection


def test_certs_chain_to_the_ca_for_the_named_hosts(tmp_path: Path, capsys) -> None:
    assert main(["deploy", "certs", "--out", str(tmp_path), "--host", "10.0.0.7",
                 "--host", "superlink.example.org", "--days", "30"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 30
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE(os.stat(tmp_path / key).st_mode) == 0o600
    assert "ca.crt" in capsys.readouterr().out


def test_node_keys_are_p384_openssh_pairs(tmp_path: Path) -> None:
    assert main(["deploy", "keys", "--out", str(tmp_path), "--nodes", "2"]) == 0
    for i in range(2):
        private = load_ssh_private_key((tmp_path / f"node-{i}").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / f"node-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert stat.S_IMODE(os.stat(tmp_path / f"node-{i}").st_mode) == 0o600


@pytest.mark.parametrize("argv, message", [
    (["deploy", "local", "--nodes", "0"], "--nodes=0 is not allowed"),
    (["deploy", "local", "--nodes", "2", "--connection", "a b"], "--connection='a b'"),
    (["deploy", "keys", "--nodes", "-1"], "--nodes=-1 is not allowed"),
    (["deploy", "certs", "--host", "not a host"], "--host='not a host'"),
    (["deploy", "certs", "--days", "0"], "--days=0 is not allowed"),
])
def test_bad_input_is_a_one_line_error(argv: list[str], message: str, tmp_path: Path,
                                       capsys) -> None:
    assert main(argv + (["--out", str(tmp_path)] if argv[1] != "local" else
                        ["--dir", str(tmp_path)])) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_connection_is_added_and_removed_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    config = tmp_path / "config.toml"
    config.write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                      'address = ":local:"\n')
    path = add_connection("mine", "127.0.0.1:9", tmp_path / "ca.crt")
    assert path == config
    data = tomllib.loads(config.read_text())["superlink"]
    assert data["mine"] == {"address": "127.0.0.1:9",
                            "root-certificates": str((tmp_path / "ca.crt").resolve())}
    add_connection("plain", "127.0.0.1:10", None)
    assert tomllib.loads(config.read_text())["superlink"]["plain"]["insecure"] is True
    remove_connection("mine", config)
    remove_connection("plain", config)
    assert tomllib.loads(config.read_text()) == {
        "superlink": {"default": "local", "local": {"address": ":local:"}}}
