"""Device partitions: disjoint and covering, seeded, skewed as asked, and their task sources."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmeta.errors import ConfigError, DataError
from fedmeta.tasks.partition import (by_alphabet, by_drawer, device_task_sources, dirichlet,
                                     sampled)


def check_disjoint_and_covering(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize("num_devices", [1, 3, 7, 20])
def test_by_drawer_gives_each_device_contiguous_drawers(omniglot_data, num_devices):
    parts = by_drawer(omniglot_data, num_devices)
    assert len(parts) == num_devices
    check_disjoint_and_covering(parts, len(omniglot_data))
    owned = [sorted(set(omniglot_data.drawer[p].tolist())) for p in parts]
    assert [d for own in owned for d in own] == list(range(1, 21))
    assert all(own == list(range(own[0], own[-1] + 1)) for own in owned)
    assert max(map(len, owned)) - min(map(len, owned)) <= 1
    assert all(len(p) == 242 * len(own) for p, own in zip(parts, owned))


@pytest.mark.parametrize("num_devices", [1, 3, 8])
def test_by_alphabet_keeps_alphabets_whole_and_balances_images(omniglot_data, num_devices):
    parts = by_alphabet(omniglot_data, num_devices)
    check_disjoint_and_covering(parts, len(omniglot_data))
    owned = [set(omniglot_data.alphabet[p].tolist()) for p in parts]
    assert sum(map(len, owned)) == 8 and all(owned)
    if num_devices == 3:  # largest first to the lightest: 940+480, 840+480+440, 800+520+340
        assert [len(p) for p in parts] == [1420, 1760, 1660]


def test_dirichlet_is_disjoint_covering_and_seeded(omniglot_data):
    parts = dirichlet(omniglot_data, 10, 0.5, seed=3)
    check_disjoint_and_covering(parts, len(omniglot_data))
    again = dirichlet(omniglot_data, 10, 0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = dirichlet(omniglot_data, 10, 0.5, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def largest_share(data, parts: list[np.ndarray]) -> float:
    """Mean over characters of the largest fraction of its images on one device."""
    counts = np.zeros((len(data.class_names), len(parts)))
    for device, rows in enumerate(parts):
        np.add.at(counts[:, device], data.character[rows], 1)
    return float(np.mean(counts.max(axis=1) / counts.sum(axis=1)))


def test_dirichlet_alpha_sets_the_skew(omniglot_data):
    assert largest_share(omniglot_data, dirichlet(omniglot_data, 5, 0.01, seed=0)) > 0.9
    even = largest_share(omniglot_data, dirichlet(omniglot_data, 5, 1000.0, seed=0))
    assert even <= 0.25 + 1e-9  # 20 images over 5 devices: 4 each, at most one off


@pytest.mark.parametrize("split, num_devices", [
    (by_drawer, 0), (by_drawer, 21), (by_drawer, 2.0), (by_drawer, True),
    (by_alphabet, 0), (by_alphabet, 9), (dirichlet, 0), (dirichlet, 4841)])
def test_bad_device_count_is_a_config_error(omniglot_data, split, num_devices):
    extra = (1.0,) if split is dirichlet else ()
    with pytest.raises(ConfigError) as caught:
        split(omniglot_data, num_devices, *extra)
    assert caught.value.field == "num_devices" and caught.value.value == num_devices


@pytest.mark.parametrize("alpha", [0, -1.0, math.inf, math.nan, "1", True])
def test_bad_alpha_is_a_config_error(omniglot_data, alpha):
    with pytest.raises(ConfigError, match="alpha=") as caught:
        dirichlet(omniglot_data, 4, alpha)
    assert caught.value.field == "alpha"


def test_device_sources_draw_only_their_own_images(omniglot_data):
    parts = by_drawer(omniglot_data, 4)  # 5 drawers each: 5 images per character
    sources = device_task_sources(omniglot_data, parts, 5, 1, 4)
    rng = np.random.default_rng(0)
    for rows, source in zip(parts, sources):
        own = {image.tobytes() for image in omniglot_data.images[rows]}
        ep = source.sample(rng)
        assert ep.query_x.shape == (20, 1, 28, 28)
        assert all(x[0].numpy().tobytes() in own for x in ep.support_x)


def test_too_few_drawers_per_device_is_a_clear_data_error(omniglot_data):
    parts = by_drawer(omniglot_data, 10)  # 2 drawers each: 2 images per character
    with pytest.raises(DataError) as caught:
        device_task_sources(omniglot_data, parts, 5, 1, 2)
    text = str(caught.value)
    assert text.startswith("device 0 of 10: cannot form 5-way 1-shot episodes with 2 queries")
    assert "only 0 of the 242 classes here have that many (484 images, 2 to 2 images each)" \
        in text
    assert "needs 3 drawers' images of 5 characters" in text


def test_sampled_draws_whole_characters_per_device_from_the_seed(omniglot_data):
    rows = sampled(omniglot_data, 7, 12, seed=3)
    characters = np.unique(omniglot_data.character[rows])
    assert len(characters) == 12
    assert len(rows) == np.isin(omniglot_data.character, characters).sum()  # every image
    assert np.array_equal(rows, sampled(omniglot_data, 7, 12, seed=3))
    others = [set(omniglot_data.character[sampled(omniglot_data, d, 12, seed=3)])
              for d in range(8, 40)]
    assert any(o != set(characters) for o in others)  # devices differ ...
    assert any(o & set(characters) for o in others)  # ... and may overlap


@pytest.mark.parametrize("num_classes", [0, 4841, 2.0, True])
def test_sampled_bad_class_count_names_the_field(omniglot_data, num_classes):
    with pytest.raises(ConfigError) as caught:
        sampled(omniglot_data, 0, num_classes)
    assert caught.value.field == "task.device_classes"
