"""Downloading CIFAR-100's python archive (for CIFAR-FS and FC100) from a local HTTP server
serving a tar.gz of the fixture files: checked, unpacked, loaded; bad archives named."""

from __future__ import annotations

import functools
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import fedmeta.cli.data
from fedmeta.cli import main
from fedmeta.errors import DataError
from fedmeta.tasks.benchmarks import load_split
from fedmeta.tasks.download import download_cifar100, md5sum

from benchmark_fixtures import write_cifar100
from test_download import Server

ARCHIVE = "cifar-100-python.tar.gz"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "served" / "files").mkdir(parents=True)
    running = Server(tmp_path / "served")
    yield running
    running.close()


def serve_tar(tmp_path: Path, add) -> tuple[str, str]:
    """A tar.gz built by ``add(tar)`` in the served folder: its name and MD5."""
    path = tmp_path / "served" / "files" / ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return ARCHIVE, md5sum(path)


def test_downloads_unpacks_and_loads(server, tmp_path):
    source = write_cifar100(tmp_path / "src")
    name, md5 = serve_tar(tmp_path, lambda tar: tar.add(source / "cifar-100-python",
                                                        "cifar-100-python"))
    folder = download_cifar100(tmp_path / "dest", f"{server.url}/{name}", md5)
    assert folder == tmp_path / "dest"
    assert len(load_split("fc100", folder, "val").class_names) == 20
    download_cifar100(tmp_path / "dest", f"{server.url}/{name}", md5)  # there: not fetched
    assert server.requests == [f"/files/{name}"]


def test_the_cli_downloads_cifar_100(server, tmp_path, capsys, monkeypatch):
    source = write_cifar100(tmp_path / "src")
    name, md5 = serve_tar(tmp_path, lambda tar: tar.add(source / "cifar-100-python",
                                                        "cifar-100-python"))
    # the served archive is the fixture's, not the release: its own checksum
    monkeypatch.setattr(fedmeta.cli.data, "download_cifar100",
                        functools.partial(download_cifar100, md5=md5))
    code = main(["data", "download", "--dataset", "cifar-100", "--dest",
                 str(tmp_path / "dest"), "--base-url", f"{server.url}/{name}"])
    assert code == 0
    assert f"{tmp_path / 'dest'}: cifar-100-python/ unpacked" in capsys.readouterr().out
    assert (tmp_path / "dest" / "cifar-100-python" / "meta").is_file()


def test_a_wrong_checksum_keeps_nothing(server, tmp_path):
    source = write_cifar100(tmp_path / "src")
    name, _ = serve_tar(tmp_path, lambda tar: tar.add(source, "x"))
    with pytest.raises(DataError, match=f"{ARCHIVE}: downloaded file has MD5"):
        download_cifar100(tmp_path / "dest", f"{server.url}/{name}", "0" * 32)
    assert not list((tmp_path / "dest").iterdir())


def test_an_archive_without_the_files_is_named(server, tmp_path):
    (tmp_path / "readme.txt").write_text("not cifar")
    name, md5 = serve_tar(tmp_path, lambda tar: tar.add(tmp_path / "readme.txt", "readme.txt"))
    with pytest.raises(DataError, match="holds no cifar-100-python/train; not CIFAR-100's"):
        download_cifar100(tmp_path / "dest", f"{server.url}/{name}", md5)


def test_a_member_escaping_the_folder_is_refused(server, tmp_path):
    (tmp_path / "evil").write_text("x")
    name, md5 = serve_tar(tmp_path, lambda tar: tar.add(tmp_path / "evil", "../evil-out"))
    with pytest.raises(DataError, match="cannot be unpacked"):
        download_cifar100(tmp_path / "dest", f"{server.url}/{name}", md5)
    assert not (tmp_path / "evil-out").exists()
