"""Flower's simulation engine with a message pump that scans the stored messages once a poll.

Flower's engine (``flwr.server.superlink.fleet.vce.vce_api``) moves messages from the
in-memory LinkState to its worker queue in ``add_messages_to_queue``: every 0.1 s, for each
of the N nodes, ``InMemoryLinkState.get_message_ins(node, limit=1)`` checks every stored
message. A poll costs N x M message checks on the driver whatever the devices do, which was
most of the host time of large fleets (``benchmarks/results/fleet_scale.md``, "flower" rows).

``indexed_dispatch`` swaps in, for the duration of a run, a pump that checks each stored
message once a poll (the same expiry and federation checks, by the LinkState's own
``_check_stored_messages``) and hands each node at most one undelivered message a poll, as
Flower's does. Messages, replies, contexts and the Ray backend are Flower's, unchanged. If
the engine's state is not the in-memory LinkState this was written against, the pump falls
back to Flower's. Only ``fedmeta run``/``simulate`` in this process use it; ``flwr run``
starts the engine in a process of its own and keeps Flower's pump.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from queue import Queue

from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

from ..config import DISPATCHES

POLL_S = 0.1  # Flower's poll interval, kept
_REQUIRED = ("lock", "message_ins_store", "_check_stored_messages")


def undelivered(state: InMemoryLinkState, node_ids: Mapping[int, object]) -> list[Message]:
    """At most one undelivered message per node of ``node_ids`` (the earliest stored),
    marked delivered, in one pass over the stored messages."""
    picked: dict[int, Message] = {}
    with state.lock:
        state._check_stored_messages(set(state.message_ins_store))
        for message in state.message_ins_store.values():
            node = message.metadata.dst_node_id
            if (message.metadata.delivered_at == "" and node in node_ids
                    and node not in picked):
                picked[node] = message
        delivered_at = now().isoformat()
        for message in picked.values():
            message.metadata.delivered_at = delivered_at
    return list(picked.values())


def _indexed_pump(state: object, queue: Queue[Message], nodes_mapping: Mapping[int, int],
                  f_stop: threading.Event) -> None:
    """``vce_api.add_messages_to_queue`` with one scan a poll (Flower's own on other states)."""
    if not (isinstance(state, InMemoryLinkState)
            and all(hasattr(state, name) for name in _REQUIRED)):
        _FLOWER_PUMP(state, queue, nodes_mapping, f_stop)
        return
    while not f_stop.is_set():
        for message in undelivered(state, nodes_mapping):
            queue.put(message)
        f_stop.wait(POLL_S)


_FLOWER_PUMP = vce_api.add_messages_to_queue


@contextmanager
def message_pump(dispatch: str) -> Iterator[None]:
    """Run the simulation engine started inside with the ``dispatch`` pump
    (``"indexed"``: one scan a poll; ``"flower"``: Flower's, untouched)."""
    if dispatch not in DISPATCHES:
        raise ValueError(f"dispatch {dispatch!r}: one of {list(DISPATCHES)}")
    if dispatch == "flower":
        yield
        return
    vce_api.add_messages_to_queue = _indexed_pump
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = _FLOWER_PUMP
