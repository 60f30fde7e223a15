"""``task.kind = "hf"``: a Hugging Face image dataset in FEMNIST's schema, read by
``datasets`` from the hub's file layout, split by flwr-datasets' partitioners into a fleet
whose devices draw episodes from their own images; bad schemas are clear ``ConfigError``s."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fedmeta import config
from fedmeta.errors import ConfigError
from fedmeta.tasks import hf_images
from fedmeta.tasks.factory import build_device_tasks, build_tasks, check_fleet_tasks

from hf_fixtures import (SPLIT_FILE, femnist_features, femnist_writers, isolated_hf_cache,
                         write_dataset, write_femnist)

GOOD = femnist_writers(12, classes=8, per_class=7)  # eligible for 5-way 1+5
SHORT = [("f9000_00", [1, 2, 3], 7),  # too few classes
         ("f9001_01", [4, 5, 6, 7, 8, 9, 10, 11], 3)]  # too few images per class


@pytest.fixture(scope="module", autouse=True)
def hf_cache(tmp_path_factory: pytest.TempPathFactory):
    """``datasets``' own cache in a temporary folder, and no fleet kept from other tests."""
    with isolated_hf_cache(tmp_path_factory.mktemp("hf-cache")) as folder:
        yield folder


@pytest.fixture(scope="module")
def femnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 writers: 12 that can form 5-way 1-shot 5-query episodes, 2 that cannot."""
    return write_femnist(tmp_path_factory.mktemp("femnist"), GOOD + SHORT)


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 writers of the same 10 classes, 5 images each: 40 images a class."""
    return write_femnist(tmp_path_factory.mktemp("dense"),
                         [(f"f{w:04d}_00", list(range(10)), 5) for w in range(8)], seed=1)


def hf_task(folder: Path, *overrides: str):
    return config.load(overrides=["task.kind=hf", f"task.dataset={folder}", "task.n_way=5",
                                  "task.k_shot=1", "task.q_query=5", *overrides]).task


def reference_rows(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row decoded straight from the parquet file by pyarrow and PIL, not by
    ``datasets`` or fedmeta: grey, 28x28 Lanczos, inverted; labels; writer ids."""
    table = pq.read_table(folder / SPLIT_FILE).to_pydict()
    images = []
    for item in table["image"]:
        grey = Image.open(io.BytesIO(item["bytes"])).convert("L").resize(
            (28, 28), Image.Resampling.LANCZOS)
        images.append(1.0 - np.asarray(grey, dtype=np.float32) / 255.0)
    return np.stack(images), np.array(table["character"]), np.array(table["writer_id"])


def as_multiset(images: np.ndarray, labels: np.ndarray) -> Counter:
    return Counter((img.tobytes(), int(y)) for img, y in zip(images, labels))


def test_femnist_schema_in_devices_are_writers_and_episodes_come_out(femnist: Path) -> None:
    task = hf_task(femnist)
    check_fleet_tasks(task, 10, 2, seed=3)
    fleet = hf_images.load_fleet(task, 10, seed=3)
    images, labels, writers = reference_rows(femnist)
    # the fleet: 10 of the 12 eligible writers, drawn with the seed; short writers left out
    assert (fleet.eligible, fleet.partitions) == (12, 14)
    assert set(fleet.names) <= {w for w, _, _ in GOOD} and len(set(fleet.names)) == 10
    assert hf_images.load_fleet(task, 10, seed=4).names != fleet.names
    for device, writer in enumerate(fleet.names):
        own = writers == writer
        assert as_multiset(*fleet.device(device)) == as_multiset(images[own], labels[own])
        source = build_device_tasks(task, device, 10, 2, seed=3)
        episode = source.sample(np.random.default_rng(device))
        assert episode.support_x.shape == (5, 1, 28, 28)
        assert episode.query_x.shape == (25, 1, 28, 28)
        assert sorted(episode.support_y.tolist()) == list(range(5))
        assert sorted(episode.query_y.tolist()) == sorted(list(range(5)) * 5)
        mine = {img.tobytes() for img in images[own]}
        drawn = np.concatenate([episode.support_x, episode.query_x])[:, 0]
        assert all(x.tobytes() in mine for x in drawn)  # only its own writer's images
    # central tasks pool the 8 training and the 2 held-out writers
    tasks = build_tasks(task, seed=3, fleet=(10, 2))
    assert tasks.info["held_out"] == fleet.names[8:]
    assert len(tasks.test.images) == sum((writers == w).sum() for w in fleet.names[8:])


def test_writers_that_cannot_form_episodes_are_left_out_and_too_many_devices_is_an_error(
        femnist: Path) -> None:
    task = hf_task(femnist)
    with pytest.raises(ConfigError, match="12 of 14 partitions by writer_id") as caught:
        check_fleet_tasks(task, 13, 2, seed=0)
    assert caught.value.field == "federation.num_devices" and caught.value.value == 13
    # with 4-way 1+2 episodes the writer of 3 classes is still short, the one of 3 images
    # a class is not: 13 eligible
    fleet = hf_images.load_fleet(hf_task(femnist, "task.n_way=4", "task.q_query=2"), 13, 0)
    assert fleet.eligible == 13 and "f9000_00" not in fleet.names


def partitioner_sizes(folder: Path, partitioner, count: int) -> list[Counter]:
    """Label counts of each partition as flwr-datasets itself makes them."""
    from flwr_datasets import FederatedDataset
    fds = FederatedDataset(dataset=str(folder), partitioners={"train": partitioner},
                           shuffle=False)
    return [Counter(fds.load_partition(p)["character"])
            for p in range(count)]


def test_dirichlet_devices_are_the_partitioners_partitions(dense: Path) -> None:
    from flwr_datasets.partitioner import DirichletPartitioner
    task = hf_task(dense, "task.partition_by=dirichlet", "task.dirichlet_alpha=1.0")
    check_fleet_tasks(task, 4, 1, seed=7)
    fleet = hf_images.load_fleet(task, 4, seed=7)
    expected = partitioner_sizes(dense, DirichletPartitioner(4, "character", 1.0,
                                                             min_partition_size=0,
                                                             shuffle=False, seed=7), 4)
    assert [Counter(fleet.device(d)[1].tolist()) for d in range(4)] == expected
    assert sum(sum(c.values()) for c in expected) == 400  # disjoint, every row once
    assert len({tuple(sorted(c.items())) for c in expected}) == 4  # label skew: all differ


def test_pathological_devices_hold_their_classes_as_the_partitioner_says(dense: Path) -> None:
    from flwr_datasets.partitioner import PathologicalPartitioner
    task = hf_task(dense, "task.partition_by=pathological", "task.device_classes=6")
    check_fleet_tasks(task, 4, 1, seed=2)
    fleet = hf_images.load_fleet(task, 4, seed=2)
    expected = partitioner_sizes(dense, PathologicalPartitioner(4, "character", 6,
                                                                shuffle=False, seed=2), 4)
    got = [Counter(fleet.device(d)[1].tolist()) for d in range(4)]
    assert got == expected and all(len(c) == 6 for c in got)


def test_decoded_fleet_is_cached_and_read_back_without_decoding(dense: Path, monkeypatch
                                                                ) -> None:
    task = hf_task(dense, "task.partition_by=pathological", "task.device_classes=5")
    first = hf_images.load_fleet(task, 3, seed=5)

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(hf_images, "_decode", no_decoding)
    again = hf_images.load_fleet(task, 3, seed=5)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert again.names == first.names
    with pytest.raises(AssertionError, match="decoded again"):  # another fleet: decodes
        hf_images.load_fleet(task, 3, seed=6)


@pytest.mark.parametrize(("overrides", "field", "value", "says"), [
    (["task.image_column=picture"], "task.image_column", "picture", "a column of"),
    (["task.image_column=hsf_id"], "task.image_column", "hsf_id", "datasets.Image"),
    (["task.label_column=writer_id", "task.partition_by=dirichlet"], "task.label_column",
     "writer_id", "ClassLabel or an integer"),
    (["task.label_column=label"], "task.label_column", "label", "a column of"),
    (["task.partition_by=user"], "task.partition_by", "user", "dirichlet or pathological"),
    (["task.split=test"], "task.split", "test", "not present"),
])
def test_bad_schema_is_a_config_error_naming_field_and_value(femnist, overrides, field,
                                                             value, says) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        check_fleet_tasks(hf_task(femnist, *overrides), 4, 1, seed=0)
    assert (caught.value.field, caught.value.value) == (field, value)


def test_empty_partition_is_a_config_error_naming_the_device(dense: Path) -> None:
    # alpha 0.05: each class goes almost whole to one device, so most of 30 get nothing
    task = hf_task(dense, "task.partition_by=dirichlet", "task.dirichlet_alpha=0.05")
    with pytest.raises(ConfigError, match=r"no empty device, but \d+ of 30 devices "
                                          r"have 0 images \(device \d+: partition \d+\)") as caught:
        check_fleet_tasks(task, 30, 2, seed=0)
    assert (caught.value.field, caught.value.value) == ("task.partition_by", "dirichlet")


def test_empty_or_missing_data_is_a_config_error_naming_the_dataset(tmp_path: Path) -> None:
    empty = write_dataset(tmp_path / "empty", {k: [] for k in femnist_features()},
                          femnist_features())
    for folder in (empty, tmp_path / "nothing-here"):
        with pytest.raises(ConfigError) as caught:
            check_fleet_tasks(hf_task(folder), 4, 1, seed=0)
        assert (caught.value.field, caught.value.value) == ("task.dataset", str(folder))


@pytest.mark.parametrize(("overrides", "field"), [
    (["task.dataset= "], "task.dataset"),
    (["task.label_column=image"], "task.label_column"),
    (["task.partition_by=character"], "task.partition_by"),
    (["task.partition_by=pathological", "task.device_classes=3"], "task.device_classes"),
    (["task.n_way=1"], "task.n_way"),
])
def test_hf_config_is_checked_before_any_data_is_read(overrides, field) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(overrides=["task.kind=hf", *overrides])
    assert caught.value.field == field
