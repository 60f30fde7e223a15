"""Loading Omniglot zips: content, deduplication, the decode cache, subsets, splits, errors."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import fedmeta.cli
import fedmeta.tasks.omniglot as omniglot
from fedmeta.errors import ConfigError, DataError
from fedmeta.tasks.images import decode
from fedmeta.tasks.omniglot import (OmniglotData, cache_dir, cache_path, data_dir, find_zips,
                                    load_omniglot, resolve_zips, split_by_alphabet)

SMALL1, SMALL2 = "images_background_small1.zip", "images_background_small2.zip"


def members(archive: Path) -> dict[str, bytes]:
    """Every PNG member of a zip and its bytes."""
    with zipfile.ZipFile(archive) as z:
        return {n: z.read(n) for n in z.namelist() if n.endswith(".png")}


def write_zip(path: Path, files: dict[str, bytes],
              compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def small_zip(omniglot_dir: Path, path: Path, characters: int = 2,
              compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip of the first ``characters`` Greek characters of a shared zip, same layout."""
    wanted = [f"Greek/character{c:02d}/" for c in range(1, characters + 1)]
    files = {n: b for n, b in members(omniglot_dir / SMALL1).items()
             if any(w in n for w in wanted)}
    return write_zip(path, files, compression)


def never_decode(data: bytes, name: str) -> np.ndarray:
    raise AssertionError(f"decoded {name} although it is cached")


def test_shared_zips_hold_8_alphabets_242_characters_4840_images(omniglot_data):
    data = omniglot_data
    assert data.alphabets == ["Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)",
                              "Korean", "Latin", "Sanskrit", "Tagalog"]
    assert (len(data), data.num_classes, len(data.class_names)) == (4840, 242, 242)
    assert data.images.shape == (4840, 28, 28) and data.images.dtype == np.float32
    assert 0 <= data.images.min() and data.images.max() <= 1
    assert data.character.dtype == data.drawer.dtype == np.int64
    # every character drawn once by each of the 20 drawers
    pairs = set(zip(data.character.tolist(), data.drawer.tolist()))
    assert len(pairs) == 4840 and set(data.drawer.tolist()) == set(range(1, 21))
    for row in (0, 1234, 4839):
        alphabet, character = data.class_names[data.character[row]].split("/")
        assert alphabet == data.alphabet[row] and character.startswith("character")


def test_images_equal_decoding_each_file_directly(omniglot_data, omniglot_dir):
    files = members(omniglot_dir / SMALL2)
    for name in ("images_background_small2/Greek/character01/0394_01.png",
                 "images_background_small2/Tagalog/character17/0909_20.png"):
        _, alphabet, character, file = name.split("/")
        row = np.flatnonzero((omniglot_data.alphabet == alphabet)
                             & (omniglot_data.drawer == int(file[5:7]))
                             & (np.array(omniglot_data.class_names)[omniglot_data.character]
                                == f"{alphabet}/{character}"))
        assert len(row) == 1
        np.testing.assert_array_equal(omniglot_data.images[row[0]], decode(files[name], name))


def test_second_load_reads_the_cache_whatever_the_zip_order(omniglot_data, omniglot_dir,
                                                           omniglot_cache, monkeypatch):
    monkeypatch.setattr(omniglot, "decode", never_decode)
    again = load_omniglot([omniglot_dir / SMALL2, omniglot_dir / SMALL1], cache=omniglot_cache)
    np.testing.assert_array_equal(again.images, omniglot_data.images)
    np.testing.assert_array_equal(again.character, omniglot_data.character)
    assert again.class_names == omniglot_data.class_names
    assert cache_path(resolve_zips(omniglot_dir), omniglot_cache).exists()


def test_one_zip_alone_and_listed_twice(omniglot_dir, tmp_path):
    once = load_omniglot(omniglot_dir / SMALL1, cache=tmp_path)
    assert (len(once.alphabets), once.num_classes, len(once)) == (5, 136, 2720)
    twice = load_omniglot([omniglot_dir / SMALL1] * 2, cache=tmp_path)
    np.testing.assert_array_equal(twice.images, once.images)


def test_changed_zip_is_decoded_again(omniglot_dir, tmp_path, monkeypatch):
    archive = small_zip(omniglot_dir, tmp_path / "images_background.zip", characters=1)
    assert len(load_omniglot(archive, cache=tmp_path / "cache")) == 20
    small_zip(omniglot_dir, archive, characters=2)
    decoded = []
    monkeypatch.setattr(omniglot, "decode", lambda data, name: decoded.append(name)
                        or decode(data, name))
    assert len(load_omniglot(archive, cache=tmp_path / "cache")) == 40
    assert len(decoded) == 40
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one cache file per content


def test_cache_is_written_whole_with_no_temporary_left(omniglot_dir, tmp_path):
    archive = small_zip(omniglot_dir, tmp_path / "images_background.zip")
    load_omniglot(archive, cache=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache_path([archive],
                                                                           tmp_path / "cache").name]


def test_damaged_cache_is_replaced(omniglot_dir, tmp_path):
    archive = small_zip(omniglot_dir, tmp_path / "images_background.zip")
    fresh = load_omniglot(archive, cache=tmp_path)
    cached = cache_path([archive], tmp_path)
    cached.write_bytes(cached.read_bytes()[:1000])
    np.testing.assert_array_equal(load_omniglot(archive, cache=tmp_path).images, fresh.images)
    np.testing.assert_array_equal(np.load(cached)["images"], fresh.images)


def test_unwritable_cache_only_warns(omniglot_dir, tmp_path):
    archive = small_zip(omniglot_dir, tmp_path / "images_background.zip")
    (tmp_path / "file").write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot write the Omniglot cache"):
        assert len(load_omniglot(archive, cache=tmp_path / "file" / "cache")) == 40


def test_cache_and_data_folders_follow_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMETA_CACHE", str(tmp_path / "root"))
    monkeypatch.delenv("FEDMETA_OMNIGLOT_DIR", raising=False)
    assert cache_dir() == tmp_path / "root" / "omniglot"
    assert cache_dir(tmp_path / "mine") == tmp_path / "mine"
    assert data_dir() == cache_dir()
    monkeypatch.setenv("FEDMETA_OMNIGLOT_DIR", str(tmp_path / "zips"))
    assert data_dir() == tmp_path / "zips"
    assert data_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("FEDMETA_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "fedmeta" / "omniglot"


def test_default_source_is_the_environment_folder(omniglot_dir, omniglot_data, monkeypatch):
    monkeypatch.setenv("FEDMETA_OMNIGLOT_DIR", str(omniglot_dir))
    monkeypatch.setattr(omniglot, "decode", never_decode)
    assert find_zips(omniglot_dir) == [omniglot_dir / SMALL1, omniglot_dir / SMALL2]
    assert len(load_omniglot()) == len(omniglot_data)  # cached by the session fixture


def _missing(tmp: Path, shared: Path) -> tuple[object, str]:
    return tmp / "nope.zip", "nope.zip: no such file or folder"


def _folder_without_zips(tmp: Path, shared: Path) -> tuple[object, str]:
    (tmp / "empty").mkdir()
    return tmp / "empty", "empty: no Omniglot zips, expected images_background*.zip"


def _not_a_zip(tmp: Path, shared: Path) -> tuple[object, str]:
    (tmp / "images_background.zip").write_text("just text")
    return tmp / "images_background.zip", "images_background.zip: not a readable zip archive"


def _truncated_zip(tmp: Path, shared: Path) -> tuple[object, str]:
    data = (shared / SMALL1).read_bytes()
    (tmp / SMALL1).write_bytes(data[:len(data) // 2])
    return tmp / SMALL1, f"{SMALL1}: not a readable zip archive"


def _corrupt_member(tmp: Path, shared: Path) -> tuple[object, str]:
    archive = small_zip(shared, tmp / "images_background.zip", compression=zipfile.ZIP_STORED)
    with zipfile.ZipFile(archive) as z:
        info = z.infolist()[0]
    data = bytearray(archive.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF
    archive.write_bytes(bytes(data))
    return archive, f"images_background.zip/{info.filename}: cannot be read from the zip"


def _no_omniglot_layout(tmp: Path, shared: Path) -> tuple[object, str]:
    archive = write_zip(tmp / "images_evaluation.zip",
                        {"notes/a.txt": b"hello", "notes/b/c.txt": b"world"})
    return archive, "images_evaluation.zip: no Omniglot images; expected"


def _image_outside_layout(tmp: Path, shared: Path) -> tuple[object, str]:
    archive = write_zip(tmp / "images_evaluation.zip",
                        {"top/Greek/character01/0394_21.png": b"drawer 21"})
    return archive, "images_evaluation.zip/top/Greek/character01/0394_21.png: image outside"


def _undecodable_png(tmp: Path, shared: Path) -> tuple[object, str]:
    files = members(shared / SMALL1)
    name = next(iter(files))
    archive = write_zip(tmp / "images_background.zip", {**files, name: b"not a png"})
    return archive, f"images_background.zip/{name}: not a readable image"


def _zips_disagree(tmp: Path, shared: Path) -> tuple[object, str]:
    files = members(shared / SMALL2)
    name = next(n for n in files if "/Greek/" in n)
    other = next(b for n, b in files.items() if "/Greek/" in n and n != name)
    archive = write_zip(tmp / "images_background.zip", {name: other})
    return [shared / SMALL1, archive], ("two zips hold different images by one name")


BROKEN: dict[str, Callable[[Path, Path], tuple[object, str]]] = {
    f.__name__.lstrip("_"): f for f in (
        _missing, _folder_without_zips, _not_a_zip, _truncated_zip, _corrupt_member,
        _no_omniglot_layout, _image_outside_layout, _undecodable_png, _zips_disagree)}


@pytest.mark.parametrize("case", BROKEN)
def test_bad_input_is_one_data_error_naming_the_path(case, omniglot_dir, tmp_path):
    source, message = BROKEN[case](tmp_path, omniglot_dir)
    with pytest.raises(DataError) as caught:
        load_omniglot(source, cache=tmp_path / "cache")
    text = str(caught.value)
    assert message in text and str(tmp_path) in text and "\n" not in text


def test_subsets_by_alphabet_drawer_and_index(omniglot_data):
    greek = omniglot_data.by_alphabets(["Greek"])
    assert (len(greek), greek.num_classes, greek.alphabets) == (480, 24, ["Greek"])
    assert greek.class_names == omniglot_data.class_names  # class ids keep their meaning
    two = omniglot_data.by_drawers([3, 17])
    assert len(two) == 2 * 242 and set(two.drawer.tolist()) == {3, 17}
    rows = np.array([5, 0, 4000])
    picked = omniglot_data.subset(rows)
    np.testing.assert_array_equal(picked.images, omniglot_data.images[rows])
    assert isinstance(picked, OmniglotData) and picked.drawer.tolist() == \
        omniglot_data.drawer[rows].tolist()
    with pytest.raises(ConfigError, match="alphabets=\\['Klingon'\\]"):
        omniglot_data.by_alphabets(["Greek", "Klingon"])
    with pytest.raises(ConfigError, match="drawers=\\[21\\]"):
        omniglot_data.by_drawers([21])


def _check_split(data: OmniglotData, train: OmniglotData, test: OmniglotData) -> None:
    assert not set(train.alphabets) & set(test.alphabets)
    assert not set(train.character.tolist()) & set(test.character.tolist())
    assert len(train) + len(test) == len(data)


@pytest.mark.parametrize("test", [["Greek", "Tagalog"], 3, 0.25])
def test_alphabet_split_is_disjoint_covering_and_seeded(omniglot_data, test):
    train, held_out = split_by_alphabet(omniglot_data, test, seed=7)
    _check_split(omniglot_data, train, held_out)
    assert len(held_out.alphabets) == (len(test) if isinstance(test, list) else 2 if
                                       test == 0.25 else test)
    again = split_by_alphabet(omniglot_data, test, seed=7)[1]
    assert again.alphabets == held_out.alphabets


def test_seeded_split_depends_on_the_seed(omniglot_data):
    picks = {tuple(split_by_alphabet(omniglot_data, 2, seed=s)[1].alphabets) for s in range(8)}
    assert len(picks) > 1


def test_explicit_train_alphabets(omniglot_data):
    train, test = split_by_alphabet(omniglot_data, ["Latin"], train=["Greek", "Korean"])
    assert (train.alphabets, test.alphabets) == (["Greek", "Korean"], ["Latin"])


@pytest.mark.parametrize("test, train, field", [
    (0, None, "test"), (8, None, "test"), (1.0, None, "test"), (-0.5, None, "test"),
    ("Greek", None, "test"), (True, None, "test"), ([], None, "test"),
    (["Greek"], ["Greek", "Latin"], "train"), (list(range(0)), ["Latin"], "test"),
    (["Klingon"], None, "alphabets"),
])
def test_bad_split_is_a_config_error(omniglot_data, test, train, field):
    with pytest.raises(ConfigError) as caught:
        split_by_alphabet(omniglot_data, test, train=train)
    assert caught.value.field == field


@pytest.fixture
def only_data(monkeypatch):
    """Register only ``data``, so these tests do not depend on the other subcommands."""
    monkeypatch.setattr(fedmeta.cli, "SUBCOMMANDS", ("data",))


def test_cli_info_prints_the_counts(only_data, omniglot_data, omniglot_dir, capsys,
                                    monkeypatch):
    monkeypatch.setattr(omniglot, "decode", never_decode)  # the session fixture cached it
    assert fedmeta.cli.main(["data", "info", "--dir", str(omniglot_dir)]) == 0
    out = capsys.readouterr().out
    assert "8 alphabets, 242 characters, 4840 images, 20 drawers" in out
    assert "Japanese_(katakana)          47     940" in out
    assert str(cache_path(resolve_zips(omniglot_dir))) in out


def test_cli_info_error_is_one_line(only_data, tmp_path, capsys):
    assert fedmeta.cli.main(["data", "info", "--dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedmeta data: error: ") and "nowhere: no such file or folder" in err
    assert err.count("\n") == 1
