"""``federation.num_devices = "auto"`` (the default under ``flwr run``): the fleet is the
federation the ServerApp finds.

``flwr run .`` on a fresh install runs Flower's local simulation of 2 SuperNodes; a
deployment has as many as were started. Before building the run, the ServerApp asks the
nodes which partition they hold (``fedmeta.app.discovery``) and takes ``num-partitions`` as
``num_devices``. The held-out share is kept near the defaults' 1 in 5 (``num_held_out`` is
lowered to ``max(1, N // 5)`` if larger) and ``min_train_devices`` to the training devices
left; every change is logged. ``fedmeta run`` has no federation to find: there
``num_devices`` is a number.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.serverapp import Grid

from ..config import FederationConfig, from_flat
from ..errors import ConfigError, FedmetaError
from .discovery import DiscoveryError, Found, ask_partitions, missing_message

logger = logging.getLogger("flwr.fedmeta")

AUTO = "auto"
NUM_DEVICES, NUM_HELD_OUT, MIN_TRAIN = ("federation.num_devices", "federation.num_held_out",
                                        "federation.min_train_devices")


def is_auto(flat: Mapping[str, Any]) -> bool:
    """Whether the run config leaves the fleet's size to the federation."""
    return str(flat.get(NUM_DEVICES, "")).strip().lower() == AUTO


def size_to(flat: Mapping[str, Any], n: int) -> tuple[dict[str, Any], list[str]]:
    """The run config for a federation of ``n`` SuperNodes, and what was changed."""
    fed = from_flat({**flat, NUM_DEVICES: FederationConfig.num_devices}).federation
    held_out = min(fed.num_held_out, max(1, n // 5))
    if n - held_out < 1:
        raise ConfigError(NUM_DEVICES, AUTO, f"a federation of at least 2 SuperNodes (one "
                                             f"trains, one is held out); it has {n}")
    min_train = min(fed.min_train_devices, n - held_out)
    changes = [f"num_devices={n}"] + [
        f"{key.split('.')[1]}={new} (was {old})"
        for key, old, new in ((NUM_HELD_OUT, fed.num_held_out, held_out),
                              (MIN_TRAIN, fed.min_train_devices, min_train)) if new != old]
    return {**flat, NUM_DEVICES: n, NUM_HELD_OUT: held_out, MIN_TRAIN: min_train}, changes


def fit_to_federation(grid: Grid, flat: Mapping[str, Any]
                      ) -> tuple[dict[str, Any], dict[int, int]]:
    """Find the federation's size; return the sized run config and node -> partition."""
    fed = from_flat({**flat, NUM_DEVICES: FederationConfig.num_devices}).federation

    def size(found: Found) -> int | None:
        sizes = sorted({n for _, n in found.partitions.values()})
        if len(sizes) > 1:
            raise FedmetaError(f"the SuperNodes disagree on the federation's size: their "
                               f"node configs say num-partitions={sizes}; give every "
                               f"SuperNode the same num-partitions")
        return sizes[0] if sizes else None

    found = ask_partitions(grid, size, fed.discovery_timeout)
    n = size(found) or len(list(grid.get_node_ids())) or 1
    if len(found.partitions) < n:
        raise DiscoveryError(missing_message(grid, found, n, fed.discovery_timeout))
    sized, changes = size_to(flat, n)
    logger.info("federation.num_devices=auto: the federation has %d SuperNodes, so %s",
                n, ", ".join(changes))
    return sized, {node: partition for node, (partition, _) in found.partitions.items()}
