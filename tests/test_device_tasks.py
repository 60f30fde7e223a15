"""Devices' Omniglot task sources in a fleet: alphabets held out, partitions, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedmeta import config
from fedmeta.errors import ConfigError, DataError
from fedmeta.tasks.factory import build_device_tasks, check_fleet_tasks


def task_config(omniglot_dir, *overrides):
    return config.load(overrides=["task.kind=omniglot", f"task.data_dir={omniglot_dir}",
                                  "task.k_shot=1", "task.q_query=2", *overrides]).task


def episode_images(source, seed: int) -> set[bytes]:
    ep = source.sample(np.random.default_rng(seed))
    return {x.tobytes() for x in np.concatenate([ep.support_x, ep.query_x])[:, 0]}


def test_drawer_fleet_trains_on_one_drawer_each_and_holds_out_alphabets(omniglot_dir,
                                                                         omniglot_data):
    task = task_config(omniglot_dir, "task.augment=true")
    check_fleet_tasks(task, 22, 2, seed=0)
    train = [build_device_tasks(task, d, 22, 2, seed=0) for d in range(20)]
    held = [build_device_tasks(task, d, 22, 2, seed=0) for d in (20, 21)]
    assert all(s.augment for s in train) and not any(s.augment for s in held)
    # a training device's real images are its drawer's; held-out devices share no class
    drawer_of = {img.tobytes(): int(d) for img, d in zip(omniglot_data.images,
                                                        omniglot_data.drawer)}
    for device in (0, 7, 19):
        real = {drawer_of[b] for b in episode_images(train[device], device) if b in drawer_of}
        assert real == {device + 1}
    train_classes = {img.tobytes() for s in train for img in s.images}
    held_classes = {img.tobytes() for s in held for img in s.images}
    assert not train_classes & held_classes
    assert held[0].num_classes == held[1].num_classes  # the same characters, other drawers


def test_one_drawer_devices_without_augment_say_what_to_do(omniglot_dir):
    task = task_config(omniglot_dir)
    with pytest.raises(DataError, match="training devices: device 0 of 20.*task.augment=true"):
        check_fleet_tasks(task, 22, 2, seed=0)


def test_more_devices_than_drawers_names_the_field(omniglot_dir):
    task = task_config(omniglot_dir, "task.augment=true")
    with pytest.raises(ConfigError, match="federation.num_devices=21.*training devices"):
        check_fleet_tasks(task, 23, 2, seed=0)


@pytest.mark.parametrize("partition", ["alphabet", "dirichlet"])
def test_other_partitions_give_disjoint_devices(omniglot_dir, partition):
    task = task_config(omniglot_dir, f"task.partition={partition}", "task.augment=true",
                       "task.dirichlet_alpha=5")
    check_fleet_tasks(task, 5, 1, seed=0)
    sources = [build_device_tasks(task, d, 5, 1, seed=0) for d in range(4)]
    owned = [{img.tobytes() for img in s.images} for s in sources]
    assert all(not (owned[i] & owned[j]) for i in range(4) for j in range(i + 1, 4))


def test_sampled_partition_builds_any_fleet_size_one_device_at_a_time(omniglot_dir):
    task = task_config(omniglot_dir, "task.partition=sampled", "task.device_classes=6")
    check_fleet_tasks(task, 10_000, 2, seed=0)  # one device of each group shows for all
    source = build_device_tasks(task, 9_321, 10_000, 2, seed=0)
    assert source.num_classes == 6
    held_out = build_device_tasks(task, 9_999, 10_000, 2, seed=0)
    assert not {img.tobytes() for img in source.images} & \
        {img.tobytes() for img in held_out.images}  # held-out alphabets stay apart


def test_sampled_partition_needs_n_way_classes(omniglot_dir):
    with pytest.raises(ConfigError, match="task.device_classes=4.*task.n_way=5"):
        task_config(omniglot_dir, "task.partition=sampled", "task.device_classes=4")
