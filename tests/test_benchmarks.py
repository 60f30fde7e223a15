"""miniImageNet, CIFAR-FS and FC100 from fixtures in exactly their standard files' formats:
schema in, episodes out; splits sized as published; bad input a clear error."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedmeta.config import from_dict
from fedmeta.errors import ConfigError, DataError
from fedmeta.tasks.benchmark_splits import CIFAR_FS, FC100, MINIIMAGENET
from fedmeta.tasks.benchmarks import load_split
from fedmeta.tasks.factory import build_device_tasks, build_tasks, check_fleet_tasks

from benchmark_fixtures import (CIFAR100, COARSE, COARSE_OF, FINE, cifar_parts, mini_split,
                                write_cifar100, write_cifar100_py2, write_mini_csv,
                                write_mini_pickle)

# The published split sizes, written here independently of the code's lists.
SIZES = {"miniimagenet": (64, 16, 20), "cifar-fs": (64, 16, 20), "fc100": (60, 20, 20)}
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def mini_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_csv(tmp_path_factory.mktemp("mini-csv"))


@pytest.fixture(scope="module")
def mini_pkl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_pickle(tmp_path_factory.mktemp("mini-pkl"))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar"))


def task(name: str, folder: Path, **fields: object):
    base = {"kind": "fewshot", "dataset": name, "data_dir": str(folder),
            "partition": "class", "n_way": 3, "k_shot": 1, "q_query": 2}
    return from_dict({"task": base | fields}).task


def test_code_split_lists_are_the_published_ones() -> None:
    for lists, sizes in ((MINIIMAGENET, SIZES["miniimagenet"]), (CIFAR_FS, SIZES["cifar-fs"])):
        assert tuple(len(lists[s]) for s in SPLITS) == sizes
        assert len(set().union(*map(set, lists.values()))) == 100  # disjoint, 100 in all
    assert set().union(*map(set, CIFAR_FS.values())) == set(FINE)
    assert tuple(len(FC100[s]) for s in SPLITS) == (12, 4, 4)
    assert set().union(*map(set, FC100.values())) == set(COARSE)
    # spot checks against the papers' split files
    assert "n01930112" in MINIIMAGENET["test"] and "n01855672" in MINIIMAGENET["val"]
    assert {"baby", "bed", "worm"} <= set(CIFAR_FS["test"]) and "otter" in CIFAR_FS["val"]
    assert set(FC100["test"]) == {"aquatic_mammals", "insects", "medium_mammals", "people"}


@pytest.mark.parametrize("layout", ["csv", "pkl"])
def test_miniimagenet_splits_hold_the_published_classes_and_pixels(layout, mini_csv, mini_pkl):
    root = mini_csv if layout == "csv" else mini_pkl
    for split, size in zip(SPLITS, SIZES["miniimagenet"]):
        data = load_split("miniimagenet", root, split)
        assert len(data.class_names) == size and set(data.class_names) == set(
            MINIIMAGENET[split])
        assert data.images.shape == (3 * size, 3, 84, 84) and data.images.dtype == np.uint8
        assert np.bincount(data.labels).tolist() == [3] * size
    # pixels: the row of class wnid's second image, against an independent reading
    data = load_split("miniimagenet", root, "val")
    wnid = "n02091244"
    got = data.images[data.labels == data.class_names.index(wnid)][1].transpose(1, 2, 0)
    if layout == "csv":
        with Image.open(root / "images" / f"{wnid}00000002.jpg") as image:
            want = np.asarray(image.convert("RGB"))
    else:
        images, classes = mini_split("val", 3)
        want = images[classes[wnid][1]]
    np.testing.assert_array_equal(got, want)


def test_miniimagenet_csv_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    root = write_mini_csv(tmp_path / "mini", splits=("val",))
    monkeypatch.setenv("FEDMETA_CACHE", str(tmp_path / "cache"))
    first = load_split("miniimagenet", root, "val")
    cached = list((tmp_path / "cache" / "fewshot").glob("miniimagenet-val-*.npz"))
    assert len(cached) == 1
    (root / "images" / "n02091244" "00000001.jpg").rename(root / "moved.jpg")  # not read now?
    with pytest.raises(DataError, match="n0209124400000001.jpg: listed in .*val.csv but "
                                        "missing"):
        load_split("miniimagenet", root, "val")  # the key stats every listed file
    (root / "moved.jpg").rename(root / "images" / "n0209124400000001.jpg")
    os.utime(root / "images" / "n0209124400000001.jpg", ns=(1, 1))  # touched: a new key
    again = load_split("miniimagenet", root, "val")
    np.testing.assert_array_equal(first.images, again.images)
    assert len(list((tmp_path / "cache" / "fewshot").glob("*.npz"))) == 2


def test_a_numpy_1_pickle_loads(tmp_path):
    """learn2learn's files were written by numpy 1, whose arrays name numpy.core."""
    images, classes = mini_split("test", 2)
    raw = pickle.dumps({"image_data": images, "class_dict": classes}, protocol=2)
    assert b"numpy._core.multiarray" in raw
    (tmp_path / "mini-imagenet-cache-test.pkl").write_bytes(
        raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    data = load_split("miniimagenet", tmp_path, "test")
    assert len(data.class_names) == 20 and len(data) == 40


@pytest.mark.parametrize("dataset", ["cifar-fs", "fc100"])
def test_cifar_splits_hold_the_published_classes_and_pixels(dataset, cifar):
    parts = cifar_parts()  # the fixture's content, rebuilt
    for split, size in zip(SPLITS, SIZES[dataset]):
        data = load_split(dataset, cifar, split)
        assert len(data.class_names) == size
        if dataset == "cifar-fs":
            assert set(data.class_names) == set(CIFAR_FS[split])
        else:  # every fine class of the split's superclasses, 5 each
            assert {COARSE_OF[c] for c in data.class_names} == set(FC100[split])
            assert set(data.class_names) == {f for c in FC100[split] for f in CIFAR100[c]}
        assert data.images.shape == (4 * size, 3, 32, 32)  # train's 3 and test's 1 per class
    data = load_split(dataset, cifar, "test")
    fine = FINE.index("baby")  # in both splits' test classes
    rows = [i for i, f in enumerate(parts["train"]["fine_labels"]) if f == fine]
    want = parts["train"]["data"][rows[0]]  # R plane, G plane, B plane
    got = data.images[data.labels == data.class_names.index("baby")][0]
    np.testing.assert_array_equal(got.reshape(-1), want)


def test_cifar_files_as_python_2_wrote_them_load_alike(cifar, tmp_path):
    """The release's pickles are Python 2's (byte-string keys and array data)."""
    py2 = write_cifar100_py2(tmp_path)
    assert (py2 / "cifar-100-python" / "meta").read_bytes()[:4] == b"\x80\x02}("
    for dataset in ("cifar-fs", "fc100"):
        a, b = load_split(dataset, cifar, "val"), load_split(dataset, py2, "val")
        assert a.class_names == b.class_names
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("dataset", ["miniimagenet", "cifar-fs", "fc100"])
def test_episodes_come_out_rgb_at_the_benchmark_size(dataset, mini_csv, cifar):
    root = mini_csv if dataset == "miniimagenet" else cifar
    tasks = build_tasks(task(dataset, root), seed=0)
    side = 84 if dataset == "miniimagenet" else 32
    assert tasks.model_kwargs == {"n_way": 3, "in_channels": 3, "image_size": side}
    for source in (tasks.train, tasks.test):
        episode = source.sample(np.random.default_rng(0))
        assert episode.support_x.shape == (3, 3, side, side)
        assert episode.query_x.shape == (6, 3, side, side)
        assert 0 <= float(episode.support_x.min()) and float(episode.support_x.max()) <= 1
        assert sorted(episode.support_y.tolist()) == [0, 1, 2]


def test_devices_split_the_train_classes_and_hold_out_eval_split_classes(cifar):
    t = task("cifar-fs", cifar)
    check_fleet_tasks(t, 6, 2)
    train = [build_device_tasks(t, d, 6, 2) for d in range(4)]
    held = [build_device_tasks(t, d, 6, 2) for d in (4, 5)]
    sizes = [s.num_classes for s in train]
    assert sum(sizes) == 64 and max(sizes) - min(sizes) <= 1  # by class: disjoint, balanced
    owned = [{im.tobytes() for im in s.images} for s in train]
    assert all(not a & b for i, a in enumerate(owned) for b in owned[i + 1:])
    assert sum(s.num_classes for s in held) == 20
    assert not set().union(*owned) & {im.tobytes() for s in held for im in s.images}


def test_too_many_devices_for_the_classes_is_named(cifar):
    with pytest.raises(ConfigError, match=r"federation.num_devices=70 .* from 1 to the 64 "
                                          r"classes"):
        check_fleet_tasks(task("cifar-fs", cifar), 71, 1)


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, expected", [
    ("miniimagenet", r"mini-imagenet-cache-train.pkl or .*train.csv with an images/ folder .*"
                     r"meta-learning-lstm"),
    ("cifar-fs", r"cifar-100-python/\{train,test,meta\} .*cifar-100-python.tar.gz"),
    ("fc100", r"cifar-100-python/\{train,test,meta\}"),
])
def test_missing_files_name_the_path_what_is_expected_and_where_to_get_them(
        dataset, expected, tmp_path):
    with pytest.raises(ConfigError, match=rf"task.data_dir='{tmp_path}' .*{expected}"):
        build_tasks(task(dataset, tmp_path))


def test_a_csv_without_its_header_is_named(tmp_path):
    root = write_mini_csv(tmp_path, splits=("val",))
    lines = (root / "val.csv").read_text().splitlines()
    (root / "val.csv").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"val.csv: first line is .* expected the header "
                                        r"filename,label"):
        load_split("miniimagenet", root, "val")


def test_an_image_that_is_not_one_is_named(tmp_path):
    root = write_mini_csv(tmp_path, splits=("val",))
    (root / "images" / "n0209124400000002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"n0209124400000002.jpg: not a readable image"):
        load_split("miniimagenet", root, "val")


def test_another_splits_file_is_named(tmp_path):
    root = write_mini_csv(tmp_path, splits=("val",))
    (root / "val.csv").rename(root / "test.csv")
    with pytest.raises(DataError, match=r"test.csv: its classes are not the 20 of "
                                        r"miniimagenet's standard test split \(20 missing"):
        load_split("miniimagenet", root, "test")


@pytest.mark.parametrize("content, message", [
    ({"images": 0}, r"has no 'image_data', 'class_dict'"),
    ({"image_data": np.zeros((2, 32, 32, 3), np.uint8), "class_dict": {"n1": [0]}},
     r"image_data is uint8 \(2, 32, 32, 3\), expected uint8 \(N, 84, 84, 3\)"),
    ({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"n1": [0, 5]}},
     r"class_dict\['n1'\] is not a list of rows of image_data \(0 to 1\)"),
    ([1, 2], r"holds a list, expected"),
])
def test_a_pickle_of_the_wrong_format_is_named(content, message, tmp_path):
    with (tmp_path / "mini-imagenet-cache-val.pkl").open("wb") as f:
        pickle.dump(content, f)
    with pytest.raises(DataError, match=message):
        load_split("miniimagenet", tmp_path, "val")


class Payload:
    def __reduce__(self):
        return (os.mkdir, (str(Path(os.environ["PAYLOAD_DIR"]) / "ran"),))


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, monkeypatch):
    monkeypatch.setenv("PAYLOAD_DIR", str(tmp_path))
    with (tmp_path / "mini-imagenet-cache-val.pkl").open("wb") as f:
        pickle.dump({"image_data": Payload(), "class_dict": {}}, f)
    with pytest.raises(DataError, match=r"not a readable pickle .* refers to (posix|os)\."
                                        r"mkdir"):
        load_split("miniimagenet", tmp_path, "val")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("change, message", [
    (lambda p: p["train"].update(data=p["train"]["data"].astype(np.float32)),
     r"cifar-100-python/train: data is float32 .* expected uint8 \(N, 3072\)"),
    (lambda p: p["test"].pop("coarse_labels"), r"test: has no 'coarse_labels'"),
    (lambda p: p["train"].update(fine_labels=p["train"]["fine_labels"][:-1]),
     r"train: fine_labels is not 300 integers, one per image"),
    (lambda p: p["meta"].update(fine_label_names=p["meta"]["fine_label_names"][:99]),
     r"meta: fine_label_names is not a list of 100 names"),
])
def test_cifar_files_of_the_wrong_format_are_named(change, message, tmp_path):
    parts = cifar_parts()
    change(parts)
    root = write_cifar100(tmp_path, parts)
    with pytest.raises(DataError, match=message):
        load_split("cifar-fs", root, "train")


def test_a_class_with_too_few_images_is_named(tmp_path):
    parts = cifar_parts(train_per_class=3, test_per_class=1)
    fine = FINE.index("whale")  # a CIFAR-FS test class: keep 1 of its 4 images
    keep = [i for i, f in enumerate(parts["train"]["fine_labels"]) if f != fine]
    parts["train"] = {k: ([v[i] for i in keep] if isinstance(v, list) else
                          v[keep] if isinstance(v, np.ndarray) else v)
                      for k, v in parts["train"].items()}
    root = write_cifar100(tmp_path, parts)
    with pytest.raises(DataError, match=r"class 'whale' of the test split has 1 images, "
                                        r"fewer than the 3 its episodes need"):
        build_tasks(task("cifar-fs", root))
    build_tasks(task("cifar-fs", root, eval_split="val"))  # whale is no val class
    with pytest.raises(DataError, match=r"class 'whale' of the test split has 1 images, "
                                        r"fewer than the 2 its episodes need \(a support and "
                                        r"a query image\)"):
        build_tasks(task("cifar-fs", root, episodes="meta-dataset", min_way=2))


@pytest.mark.parametrize("fields, name", [
    ({"dataset": "omniglot"}, "task.dataset"),
    ({"data_dir": ""}, "task.data_dir"),
    ({"partition": "drawer"}, "task.partition"),
    ({"eval_split": "train"}, "task.eval_split"),
    ({"episodes": "varying"}, "task.episodes"),
    ({"episodes": "meta-dataset", "min_way": 4}, "task.min_way"),
    ({"episodes": "meta-dataset", "min_way": 2, "max_support": 2}, "task.max_support"),
])
def test_bad_fewshot_config_names_the_field(fields, name, tmp_path):
    with pytest.raises(ConfigError) as caught:
        task("cifar-fs", tmp_path, **fields)
    assert caught.value.field == name


def test_meta_dataset_episodes_are_for_kind_fewshot_only() -> None:
    with pytest.raises(ConfigError, match="task.episodes='meta-dataset'"):
        from_dict({"task": {"kind": "omniglot", "episodes": "meta-dataset"}})
    with pytest.raises(ConfigError, match="task.partition='class' .* for kind omniglot"):
        from_dict({"task": {"kind": "omniglot", "partition": "class"}})


def test_csv_rows_written_by_the_fixture_are_the_ravi_format(mini_csv):
    with (mini_csv / "train.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "label"] and rows[1] == ["n0153282900000001.jpg",
                                                             "n01532829"]


def test_dirichlet_and_sampled_partitions_of_the_train_split(cifar):
    t = task("cifar-fs", cifar, partition="dirichlet", dirichlet_alpha=1000.0, k_shot=1,
             q_query=1)
    check_fleet_tasks(t, 3, 1)
    train = [build_device_tasks(t, d, 3, 1) for d in range(2)]
    images = [{im.tobytes() for im in s.images} for s in train]
    assert not images[0] & images[1] and len(images[0] | images[1]) == 64 * 4
    t = task("cifar-fs", cifar, partition="sampled", device_classes=5)
    assert [build_device_tasks(t, d, 5, 1).num_classes for d in range(4)] == [5] * 4
    with pytest.raises(ConfigError, match=r"task.partition='dirichlet' .* but training device "
                                          r"\d+ \(\d+ images of train\) cannot"):
        check_fleet_tasks(task("cifar-fs", cifar, partition="dirichlet",
                               dirichlet_alpha=0.01), 31, 1)


def test_where_both_layouts_are_there_the_pickle_is_read(tmp_path):
    write_mini_csv(tmp_path, per_class=2, splits=("val",))
    write_mini_pickle(tmp_path, per_class=3, splits=("val",))
    data = load_split("miniimagenet", tmp_path, "val")
    assert data.source.endswith("mini-imagenet-cache-val.pkl") and len(data) == 16 * 3
