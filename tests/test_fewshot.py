"""The N-way K-shot sampler: episode shapes, true classes, rotations, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmeta.errors import ConfigError, DataError
from fedmeta.tasks.episode import Episode, TaskSource
from fedmeta.tasks.distort import distort
from fedmeta.tasks.fewshot import FewShotTaskSource


def lookup(images: np.ndarray, rotations: bool = False) -> dict[bytes, set[tuple[int, int]]]:
    """Image bytes -> the (row, quarter turns) that give exactly that image."""
    found: dict[bytes, set[tuple[int, int]]] = {}
    for row, image in enumerate(images):
        for turns in range(4 if rotations else 1):
            found.setdefault(np.rot90(image, turns).tobytes(), set()).add((row, turns))
    return found


def origins(episode: Episode, table: dict) -> list[set[tuple[int, int]]]:
    """Where each support then query image of an episode came from."""
    x = torch.cat([episode.support_x, episode.query_x])[:, 0].numpy()
    return [table[image.tobytes()] for image in x]


@pytest.mark.parametrize("n_way, k_shot, q_query", [(5, 1, 15), (20, 5, 5), (3, 19, 1)])
def test_episode_shapes_labels_and_true_classes(omniglot_data, n_way, k_shot, q_query):
    data = omniglot_data
    source: TaskSource = FewShotTaskSource(data.images, data.character, n_way, k_shot, q_query)
    table = lookup(data.images)
    rng = np.random.default_rng(0)
    for _ in range(5):
        ep = source.sample(rng)
        assert ep.n_way == n_way
        assert ep.support_x.shape == (n_way * k_shot, 1, 28, 28)
        assert ep.query_x.shape == (n_way * q_query, 1, 28, 28)
        assert ep.support_x.dtype == torch.float32 and ep.support_y.dtype == torch.int64
        assert sorted(ep.support_y.tolist()) == sorted(list(range(n_way)) * k_shot)
        assert sorted(ep.query_y.tolist()) == sorted(list(range(n_way)) * q_query)
        rows = [min(o)[0] for o in origins(ep, table)]
        assert len(set(rows)) == len(rows)  # no image twice in an episode
        labels = torch.cat([ep.support_y, ep.query_y]).tolist()
        class_of = {}
        for row, label in zip(rows, labels):
            assert class_of.setdefault(label, data.character[row]) == data.character[row]
        assert len(set(class_of.values())) == n_way


def test_labels_are_assigned_in_random_order(omniglot_data):
    data = omniglot_data.by_alphabets(["Greek"])
    source = FewShotTaskSource(data.images, data.character, 2, 1, 1)
    rng = np.random.default_rng(1)
    table = lookup(data.images)
    lower_class_label = set()
    for _ in range(20):
        ep = source.sample(rng)
        rows = [min(o)[0] for o in origins(ep, table)][:2]
        classes = data.character[rows]
        lower_class_label.add(int(ep.support_y[int(np.argmin(classes))]))
    assert lower_class_label == {0, 1}


def test_rotations_make_each_quarter_turn_a_class(omniglot_data):
    data = omniglot_data.by_alphabets(["Tagalog"])  # 17 characters: 68 rotated classes
    source = FewShotTaskSource(data.images, data.character, 60, 1, 2, rotations=True)
    assert source.num_classes == 68
    table = lookup(data.images, rotations=True)
    ep = source.sample(np.random.default_rng(2))
    found = origins(ep, table)
    labels = torch.cat([ep.support_y, ep.query_y]).tolist()
    per_label: dict[int, set[tuple[int, int]]] = {}
    for where, label in zip(found, labels):
        variants = {(int(data.character[row]), turns) for row, turns in where}
        per_label[label] = per_label.get(label, variants) & variants
    assert all(per_label.values())  # one class and one rotation per label
    assert len({min(v) for v in per_label.values()}) == 60
    assert {turns for v in per_label.values() for _, turns in v} == {0, 1, 2, 3}


def test_same_generator_same_episodes(omniglot_data):
    source = FewShotTaskSource(omniglot_data.images, omniglot_data.character, 5, 1, 5,
                               rotations=True)
    first = [source.sample(np.random.default_rng(3)) for _ in range(2)]
    other = source.sample(np.random.default_rng(4))
    for a, b in zip(first[0].__dict__.values(), first[1].__dict__.values()):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert not torch.equal(first[0].support_x, other.support_x)


def test_any_label_values_and_only_usable_classes():
    images = np.arange(7 * 4 * 4, dtype=np.float32).reshape(7, 4, 4)
    labels = np.array([42, 7, 42, 7, 42, 7, 100])  # class 100 has one image: never drawn
    source = FewShotTaskSource(images, labels, 2, 2, 1)
    assert source.num_classes == 2
    ep = source.sample(np.random.default_rng(0))
    drawn = {int(x[0, 0, 0]) // 16 for x in torch.cat([ep.support_x, ep.query_x])}
    assert drawn == set(range(6))
    assert ep.support_x.shape == (4, 1, 4, 4)


def test_too_few_classes_says_what_is_needed_and_what_is_there(omniglot_data):
    greek = omniglot_data.by_alphabets(["Greek"])
    with pytest.raises(DataError) as caught:
        FewShotTaskSource(greek.images, greek.character, 30, 1, 5)
    text = str(caught.value)
    assert "30-way 1-shot episodes with 5 queries" in text
    assert "need 30 classes with at least k_shot + q_query = 6" in text
    assert "only 24 of the 24 classes here" in text
    FewShotTaskSource(greek.images, greek.character, 30, 1, 5, rotations=True)  # 96 classes


def test_too_few_images_per_class_says_so(omniglot_data):
    three_drawers = omniglot_data.by_drawers([1, 2, 3])
    with pytest.raises(DataError) as caught:
        FewShotTaskSource(three_drawers.images, three_drawers.character, 5, 1, 3,
                          rotations=True)
    text = str(caught.value)
    assert "at least k_shot + q_query = 4 distinct images" in text
    assert "only 0 of the 242 classes here have that many (x4 with rotations: 0)" in text
    assert "3 to 3 images each" in text


@pytest.mark.parametrize("field, value", [("n_way", 0), ("k_shot", -1), ("q_query", 0),
                                          ("n_way", 2.0), ("k_shot", True)])
def test_bad_counts_are_config_errors(field, value):
    counts = {"n_way": 2, "k_shot": 1, "q_query": 1} | {field: value}
    with pytest.raises(ConfigError) as caught:
        FewShotTaskSource(np.zeros((4, 2, 2)), np.array([0, 0, 1, 1]), **counts)
    assert caught.value.field == field


def test_bad_arrays_are_data_errors():
    with pytest.raises(DataError, match="must be \\(n, \\[C,\\] H, W\\) and \\(n,\\)"):
        FewShotTaskSource(np.zeros((4, 2, 2)), np.array([0, 1, 1]), 2, 1, 1)
    with pytest.raises(DataError, match="images \\(4, 2\\) must be \\(n, \\[C,\\] H, W\\)"):
        FewShotTaskSource(np.zeros((4, 2)), np.array([0, 0, 1, 1]), 2, 1, 1)
    with pytest.raises(DataError, match="rotations need square images"):
        FewShotTaskSource(np.zeros((4, 2, 3)), np.array([0, 0, 1, 1]), 2, 1, 1, rotations=True)


def test_augment_fills_single_image_classes_with_distortions_of_them(omniglot_data):
    one_drawer = omniglot_data.by_drawers([3])
    source = FewShotTaskSource(one_drawer.images, one_drawer.character, 5, 1, 3, augment=True)
    ep = source.sample(np.random.default_rng(1))
    assert ep.query_x.shape == (15, 1, 28, 28)
    real = {image.tobytes() for image in one_drawer.images}
    for label in range(5):
        block = torch.cat([ep.support_x[ep.support_y == label],
                           ep.query_x[ep.query_y == label]])[:, 0].numpy()
        assert sum(image.tobytes() in real for image in block) == 1  # the drawer's one image
        original = next(image for image in block if image.tobytes() in real)
        for image in block:  # the others are its distortions: close, but not equal
            if image.tobytes() not in real:
                assert np.abs(image - original).mean() < 0.25
                assert np.corrcoef(image.ravel(), original.ravel())[0, 1] > 0.2
    again = source.sample(np.random.default_rng(1))
    assert torch.equal(ep.query_x, again.query_x)


def test_augment_leaves_classes_with_enough_images_untouched(omniglot_data):
    data = omniglot_data
    plain = FewShotTaskSource(data.images, data.character, 5, 1, 5)
    augmented = FewShotTaskSource(data.images, data.character, 5, 1, 5, augment=True)
    a, b = plain.sample(np.random.default_rng(4)), augmented.sample(np.random.default_rng(4))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)


def test_rgb_uint8_images_come_out_scaled_float_with_their_channels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 3, 4, 4), dtype=np.uint8)
    source = FewShotTaskSource(images, np.repeat(np.arange(4), 3), 2, 1, 2)
    assert source.images.dtype == np.uint8  # kept: a quarter of float32's memory
    ep = source.sample(np.random.default_rng(1))
    assert ep.support_x.dtype == torch.float32 and ep.support_x.shape == (2, 3, 4, 4)
    scaled = {(image.astype(np.float32) / np.float32(255)).tobytes() for image in images}
    assert all(x.numpy().tobytes() in scaled for x in torch.cat([ep.support_x, ep.query_x]))


def test_augment_distorts_every_channel_of_an_image_alike():
    grey = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)
    rgb = np.repeat(grey[:, None], 3, axis=1)  # three equal channels
    out = distort(rgb, np.random.default_rng(5))
    assert out.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(out[:, 0], out[:, 2])
    np.testing.assert_array_equal(out[:, 0], distort(grey, np.random.default_rng(5)))
