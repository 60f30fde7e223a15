"""Reading image episodes from folders and zips in the generic and omniglot-runs layouts."""

from __future__ import annotations

import zipfile

import pytest
import torch

from episode_images import BROKEN, make_generic, make_runs, zip_folder
from fedmeta.errors import DataError
from fedmeta.tasks.episode import Episode
from fedmeta.tasks.image_episodes import read_image_episodes

FIELDS = ("support_x", "support_y", "query_x", "query_y", "n_way")


def assert_same(got: dict[str, Episode], expected: dict[str, Episode]) -> None:
    assert list(got) == list(expected)
    for name, episode in expected.items():
        for field in FIELDS:
            a, b = getattr(got[name], field), getattr(episode, field)
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, (name, field)


def test_generic_folder_gives_the_images_labelled_by_sorted_class_name(tmp_path):
    expected = make_generic(tmp_path / "eps", episodes=2, classes=("b", "c", "a"), shots=2,
                            queries=2)
    got = read_image_episodes(tmp_path / "eps")
    assert got.layout == "generic" and len(got) == 2
    ep = got.episodes["ep00"]
    assert ep.support_x.shape == (6, 1, 28, 28) and ep.support_x.dtype == torch.float32
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2] and ep.n_way == 3
    assert_same(got.episodes, expected)


@pytest.mark.parametrize("top", ["", "episodes"])
def test_generic_zip_with_or_without_a_top_folder(tmp_path, top):
    expected = make_generic(tmp_path / "eps", episodes=3)
    got = read_image_episodes(zip_folder(tmp_path / "eps", tmp_path / "eps.zip", top=top))
    assert got.layout == "generic"
    assert_same(got.episodes, expected)


@pytest.mark.parametrize("prefixed", [True, False])
@pytest.mark.parametrize("form", ["folder", "zip", "zip-in-all_runs"])
def test_runs_label_each_item_with_the_class_image_class_labels_txt_names(tmp_path, prefixed,
                                                                          form):
    labels = make_runs(tmp_path / "all_runs", runs=2, ways=4, prefixed=prefixed)
    path = {"folder": tmp_path / "all_runs",
            "zip": zip_folder(tmp_path / "all_runs", tmp_path / "a.zip"),
            "zip-in-all_runs": zip_folder(tmp_path / "all_runs", tmp_path / "b.zip",
                                          top="all_runs")}[form]
    got = read_image_episodes(path)
    assert got.layout == "omniglot-runs" and list(got.episodes) == ["run01", "run02"]
    for run, episode in got.episodes.items():
        assert episode.n_way == 4 and episode.support_y.tolist() == [0, 1, 2, 3]
        assert episode.query_y.tolist() == labels[run]
        assert episode.query_x.shape == (4, 1, 28, 28)


def test_runs_items_are_the_class_images_they_copy(tmp_path):
    make_runs(tmp_path / "runs", runs=1, ways=4)
    episode = read_image_episodes(tmp_path / "runs").episodes["run01"]
    assert torch.equal(episode.query_x, episode.support_x[episode.query_y])


def test_hidden_files_and_macos_debris_are_ignored(tmp_path):
    expected = make_generic(tmp_path / "eps", episodes=1)
    archive = zip_folder(tmp_path / "eps", tmp_path / "eps.zip", top="eps")
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("__MACOSX/eps/ep00/support/a/._00.png", b"junk")
        z.writestr("eps/ep00/support/a/.DS_Store", b"junk")
    assert_same(read_image_episodes(archive).episodes, expected)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_bad_input_is_one_data_error_naming_the_path(tmp_path, case):
    path, message = BROKEN[case](tmp_path)
    with pytest.raises(DataError) as info:
        read_image_episodes(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_folder_of_neither_layout_says_which_layouts_are_expected(tmp_path):
    path, _ = BROKEN["neither_layout"](tmp_path)
    with pytest.raises(DataError, match=r"generic: <episode>/support/<class>/<image>.*"
                                        r"omniglot-runs: <run>/training/"):
        read_image_episodes(path)
