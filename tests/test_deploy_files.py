"""``fedmeta deploy certs`` / ``keys`` / ``check`` and the Flower connection file, without
Flower's processes: the certificate chain verifies for the named hosts, keys load as Flower
loads them and are created 0600 in folders git ignores, the federation's folder is outside
the source tree by default, ``check`` tells a TLS port from a plain one on 127.0.0.1, bad
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

ROOT = Path(__file__).resolve().parents[1]


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


# -- secrets: outside the source tree, hidden from git, created 0600 -----------------------
def test_the_federation_folder_defaults_to_the_users_state_dir(tmp_path: Path,
                                                               monkeypatch) -> None:
    from fedmeta.cli import build_parser
    from fedmeta.cli.deploy import _folder
    from fedmeta.deploy.secrets import default_federation_dir

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_federation_dir() == tmp_path / "state" / "fedmeta" / "federation"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "state" / "fedmeta" / "federation"
    assert default_federation_dir() == expected
    for command in ("local", "down"):
        args = build_parser().parse_args(["deploy", command] + (["--nodes", "2"] if
                                                                command == "local" else []))
        assert _folder(args.dir) == expected
        assert ROOT not in _folder(args.dir).parents


def test_private_keys_are_created_0600_and_hidden_from_git(tmp_path: Path,
                                                            monkeypatch) -> None:
    import subprocess

    from fedmeta.deploy.node_keys import make_node_keys
    from fedmeta.deploy.tls import make_certificates

    repo = tmp_path / "checkout"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "code.py").write_text("")
    old = repo / "keys" / "node-0"  # an old key readable by all is replaced, not reused
    old.parent.mkdir()
    old.write_text("old")
    old.chmod(0o644)

    def no_chmod(*args, **kwargs):
        raise AssertionError("a private key must be created 0600, not chmod-ed after")

    for name in ("chmod", "fchmod", "lchmod"):
        monkeypatch.setattr(os, name, no_chmod, raising=False)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    umask = os.umask(0)  # the worst case: nothing masked at creation
    try:
        make_certificates(repo / "certs")
        make_node_keys(repo / "keys", 2)
        make_node_keys(repo / "new" / "keys", 1)
    finally:
        os.umask(umask)
        monkeypatch.undo()
    for key in ("certs/ca.key", "certs/server.key", "keys/node-0", "keys/node-1",
                "new/keys/node-0"):
        assert stat.S_IMODE(os.stat(repo / key).st_mode) == 0o600, key
    assert (repo / "keys" / "node-0").read_text() != "old"
    for folder in ("certs", "new/keys"):  # created here: private, with a .gitignore
        assert stat.S_IMODE(os.stat(repo / folder).st_mode) == 0o700
        assert (repo / folder / ".gitignore").read_text().splitlines()[-1] == "*"
    untracked = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=all"], capture_output=True, text=True,
                               check=True).stdout.split()
    # keys/ existed before (the user's own folder): left as it was, with no .gitignore
    assert sorted(u for u in untracked if u != "??") == [
        "code.py", "keys/node-0", "keys/node-0.pub", "keys/node-1", "keys/node-1.pub"]


def test_the_projects_gitignore_covers_the_old_federation_folder() -> None:
    import subprocess

    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q",
                              ".fedmeta-federation/keys/node-0"])
    assert ignored.returncode == 0


# -- fedmeta deploy check: does the SuperLink speak TLS? -----------------------------------
class _Server:
    """A TCP server on 127.0.0.1 that speaks TLS with ``certs`` (or plain HTTP without)."""

    def __init__(self, certs: Path | None) -> None:
        import socket
        import ssl
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.context = None
        if certs is not None:
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.context.load_cert_chain(certs / "server.pem", certs / "server.key")
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        import ssl

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    if self.context is None:
                        conn.recv(1024)
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    else:
                        with self.context.wrap_socket(conn, server_side=True) as tls:
                            tls.recv(1)
                except (OSError, ssl.SSLError):
                    pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def servers(tmp_path: Path):
    from fedmeta.deploy.tls import make_certificates

    make_certificates(tmp_path / "certs", ["127.0.0.1"])
    make_certificates(tmp_path / "other", ["127.0.0.1"])
    tls, plain = _Server(tmp_path / "certs"), _Server(None)
    try:
        yield tls, plain, tmp_path / "certs" / "ca.crt", tmp_path / "other" / "ca.crt"
    finally:
        tls.close()
        plain.close()


def test_check_explains_an_insecure_supernode_against_a_tls_superlink(servers, capsys) -> None:
    tls, plain, ca, other_ca = servers

    def check(*argv: str) -> tuple[int, str, str]:
        code = main(["deploy", "check", *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, _, err = check("--superlink", tls.address, "--insecure")
    assert code == 2 and err.count("\n") == 1, err
    assert f"the SuperLink on {tls.address} speaks TLS" in err
    assert "pass --root-certificates" in err and "Connection attempt failed" in err
    code, out, _ = check("--superlink", tls.address, "--root-certificates", str(ca))
    assert code == 0 and "verifies against" in out
    code, _, err = check("--superlink", tls.address, "--root-certificates", str(other_ca))
    assert code == 2 and f"does not verify against {other_ca}" in err
    code, _, err = check("--superlink", plain.address, "--root-certificates", str(ca))
    assert code == 2 and "does not speak TLS" in err
    code, out, _ = check("--superlink", plain.address, "--insecure")
    assert code == 0 and "without TLS" in out
    code, out, _ = check("--superlink", tls.address)
    assert code == 0 and "speaks TLS" in out


def test_check_says_when_nothing_answers(capsys) -> None:
    from fedmeta.deploy.processes import free_port

    assert main(["deploy", "check", "--superlink", f"127.0.0.1:{free_port()}",
                 "--insecure"]) == 2
    err = capsys.readouterr().err
    assert "nothing answers on 127.0.0.1:" in err and err.count("\n") == 1
    assert main(["deploy", "check", "--superlink", "no-port"]) == 2
    assert "--superlink='no-port' is not allowed" in capsys.readouterr().err
