"""Downloading the release, against a local HTTP server serving a copy of a shared zip."""

from __future__ import annotations

import functools
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import fedmeta.cli
import fedmeta.cli.data
from fedmeta.errors import DataError
from fedmeta.tasks.download import download_omniglot, md5sum

NAME = "images_background_small1.zip"


class Server:
    """A local HTTP server of one folder, recording the paths asked for."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path.endswith("/cut.zip"):  # promise 1000 bytes, send 100
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 100)
                    self.close_connection = True
                else:
                    super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(omniglot_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of a shared zip in the served folder ``files/``, and its MD5."""
    (tmp_path / "served" / "files").mkdir(parents=True)
    copy = shutil.copy(omniglot_dir / NAME, tmp_path / "served" / "files" / NAME)
    return Path(copy), md5sum(Path(copy))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path / "served")
    yield running
    running.close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_downloads_then_skips_what_is_there(served, server, tmp_path):
    source, md5 = served
    dest = tmp_path / "dest"
    assert download_omniglot(dest, server.url, {NAME: md5}) == {dest / NAME: True}
    assert (dest / NAME).read_bytes() == source.read_bytes()
    assert leftovers(dest) == [NAME]
    assert download_omniglot(dest, server.url, {NAME: md5}) == {dest / NAME: False}
    assert server.requests == [f"/files/{NAME}"]


def test_damaged_local_copy_is_downloaded_again(served, server, tmp_path):
    source, md5 = served
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / NAME).write_bytes(b"half a zip")
    assert download_omniglot(tmp_path / "dest", server.url, {NAME: md5})[
        tmp_path / "dest" / NAME]
    assert (tmp_path / "dest" / NAME).read_bytes() == source.read_bytes()


def test_default_destination_is_the_cache_folder(served, server, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMETA_CACHE", str(tmp_path / "cache"))
    paths = download_omniglot(base_url=server.url, files={NAME: served[1]})
    assert list(paths) == [tmp_path / "cache" / "omniglot" / NAME]


def test_checksum_mismatch_names_the_url_and_keeps_nothing(served, server, tmp_path):
    with pytest.raises(DataError) as caught:
        download_omniglot(tmp_path / "dest", server.url, {NAME: "0" * 32})
    text = str(caught.value)
    assert text.startswith(f"{server.url}/{NAME}: downloaded file has MD5 {served[1]}, "
                           f"expected {'0' * 32}")
    assert leftovers(tmp_path / "dest") == []


def test_missing_file_is_a_data_error_naming_the_url(served, server, tmp_path):
    with pytest.raises(DataError, match=f"{server.url}/nope.zip: download failed "
                                        f"\\(HTTP 404 File not found\\)"):
        download_omniglot(tmp_path / "dest", server.url, {"nope.zip": "0" * 32})
    assert leftovers(tmp_path / "dest") == []


def test_connection_cut_short_is_a_data_error_naming_the_url(server, tmp_path):
    with pytest.raises(DataError, match=f"{server.url}/cut.zip: download cut off after 100 "
                                        f"of 1000 bytes"):
        download_omniglot(tmp_path / "dest", server.url, {"cut.zip": "0" * 32})
    assert leftovers(tmp_path / "dest") == []


def test_unreachable_server_is_a_data_error_naming_the_url(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(DataError, match=f"{url}/{NAME}: download failed"):
        download_omniglot(tmp_path / "dest", url, {NAME: "0" * 32}, timeout=5)
    assert leftovers(tmp_path / "dest") == []


@pytest.fixture
def only_data(monkeypatch):
    """Register only ``data``, so these tests do not depend on the other subcommands."""
    monkeypatch.setattr(fedmeta.cli, "SUBCOMMANDS", ("data",))


def test_cli_download_reports_each_file(only_data, served, server, tmp_path, capsys,
                                        monkeypatch):
    monkeypatch.setattr(fedmeta.cli.data, "download_omniglot", functools.partial(
        download_omniglot, files={NAME: served[1]}))
    args = ["data", "download", "--dest", str(tmp_path / "dest"), "--base-url", server.url]
    assert fedmeta.cli.main(args) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'dest' / NAME}: downloaded\n"
    assert fedmeta.cli.main(args) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'dest' / NAME}: already there, checksum ok\n"


def test_cli_download_error_is_one_line(only_data, served, server, tmp_path, capsys):
    args = ["data", "download", "--dest", str(tmp_path / "dest"), "--base-url", server.url]
    assert fedmeta.cli.main(args) == 2
    err = capsys.readouterr().err
    assert err == f"fedmeta data: error: {server.url}/images_background.zip: download " \
                  f"failed (HTTP 404 File not found)\n"
