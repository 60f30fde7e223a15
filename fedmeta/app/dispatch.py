"""Flower's simulation engine with a message pump that looks at each stored message once.

Flower's engine (``flwr.server.superlink.fleet.vce.vce_api``) moves messages from the
in-memory LinkState to its worker queue in ``add_messages_to_queue``: every 0.1 s, for each
of the N nodes, ``InMemoryLinkState.get_message_ins(node, limit=1)`` checks every stored
message. A poll costs N x M message checks on the driver whatever the devices do, which was
most of the host time of large fleets (``benchmarks/results/fleet_scale.md``, "flower" rows).

``indexed_dispatch`` swaps in, for the duration of a run, a pump that checks only the stored
messages it has not handed out yet (the same expiry and federation checks, by the
LinkState's own ``_check_stored_messages``; a handed-out message's expiry is checked by the
server's pulls, as in Flower) and hands each node at most one undelivered message a poll, as
Flower's does. It polls when a message is stored (``Arrivals``) and at least every 0.1 s,
and it lets ``fedmeta.app.fold`` pull a round's replies as soon as the last one is stored,
instead of at its next 0.1 s pull. Messages, replies, contexts and the Ray backend are
Flower's, unchanged. If the engine's state is not the in-memory LinkState this was written
against, the pump falls back to Flower's. Only ``fedmeta run``/``simulate`` in this process
use it; ``flwr run`` starts the engine in a process of its own and keeps Flower's pump.

Under either pump, ``message_pump`` hands the server the engine's own node -> partition
mapping when the pump starts (``EngineNodes``), so that ``simulate`` need not ask every node
which partition it holds (one query message through Ray per device before the first round).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from queue import Queue

from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

from ..config import DISPATCHES

POLL_S = 0.1  # Flower's poll interval, kept as the longest wait
_REQUIRED = ("lock", "message_ins_store", "_check_stored_messages", "store_message_ins",
             "store_message_res")
_ARRIVALS = "_fedmeta_arrivals"  # the LinkState attribute that holds its Arrivals


class Arrivals:
    """Counts of the messages and replies stored in a LinkState, to wait on. A waiter for
    messages is woken by messages alone, and one for replies by the reply that brings the
    count it waits for: not by every store (each of a round's replies would wake the server,
    each a thread switch on a host whose cores the devices' workers fill)."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self.messages_stored = threading.Condition(lock)
        self.replies_stored = threading.Condition(lock)
        self.messages = 0
        self.replies = 0
        self.goals: list[int] = []  # the reply counts waited for

    def count(self, replies: bool) -> None:
        """One more message (``replies``: reply) stored."""
        with self.messages_stored:
            if replies:
                self.replies += 1
                if any(self.replies >= goal for goal in self.goals):
                    self.replies_stored.notify_all()
            else:
                self.messages += 1
                self.messages_stored.notify_all()

    def wait_messages(self, seen: int, timeout: float) -> None:
        """Until more than ``seen`` messages were stored, or ``timeout`` seconds."""
        with self.messages_stored:
            self.messages_stored.wait_for(lambda: self.messages != seen, timeout)

    def wait_replies(self, count: int, timeout: float) -> None:
        """Until ``count`` replies in all were stored, or ``timeout`` seconds."""
        with self.replies_stored:
            self.goals.append(count)
            try:
                self.replies_stored.wait_for(lambda: self.replies >= count, timeout)
            finally:
                self.goals.remove(count)


def arrivals_of(grid: object) -> Arrivals | None:
    """The ``Arrivals`` of the LinkState behind ``grid`` while the indexed pump runs."""
    return getattr(getattr(grid, "state", None), _ARRIVALS, None)


@contextmanager
def _counted(state: InMemoryLinkState) -> Iterator[Arrivals]:
    """``state`` counting what it stores (wrapping its two store methods) while inside."""
    arrivals = Arrivals()

    def counting(store: Callable[[Message], str | None], replies: bool
                 ) -> Callable[[Message], str | None]:
        def stored(message: Message) -> str | None:
            message_id = store(message)
            arrivals.count(replies)
            return message_id
        return stored

    state.store_message_ins = counting(state.store_message_ins, False)  # type: ignore[method-assign]
    state.store_message_res = counting(state.store_message_res, True)  # type: ignore[method-assign]
    setattr(state, _ARRIVALS, arrivals)
    try:
        yield arrivals
    finally:
        for name in ("store_message_ins", "store_message_res", _ARRIVALS):
            delattr(state, name)  # the class's methods again


def undelivered(state: InMemoryLinkState, node_ids: Mapping[int, object],
                handed: set[str] | None = None) -> list[Message]:
    """At most one undelivered message per node of ``node_ids`` (the earliest stored),
    marked delivered. Messages in ``handed`` (ids) are skipped unchecked; those picked or
    found delivered are added to it, and ids no longer stored are dropped from it."""
    handed = set() if handed is None else handed
    picked: dict[int, Message] = {}
    with state.lock:
        handed.intersection_update(state.message_ins_store)
        state._check_stored_messages(state.message_ins_store.keys() - handed)
        for message_id, message in state.message_ins_store.items():
            if message_id in handed:
                continue
            metadata = message.metadata
            if metadata.delivered_at != "":
                handed.add(message_id)
                continue
            node = metadata.dst_node_id
            if node in node_ids and node not in picked:
                picked[node] = message
                handed.add(message_id)
        delivered_at = now().isoformat()
        for message in picked.values():
            message.metadata.delivered_at = delivered_at
    return list(picked.values())


def _indexed_pump(state: object, queue: Queue[Message], nodes_mapping: Mapping[int, int],
                  f_stop: threading.Event) -> None:
    """``vce_api.add_messages_to_queue`` checking each message once, polling when one is
    stored (Flower's own pump on other states)."""
    if not (isinstance(state, InMemoryLinkState)
            and all(hasattr(state, name) for name in _REQUIRED)):
        _FLOWER_PUMP(state, queue, nodes_mapping, f_stop)
        return
    handed: set[str] = set()
    with _counted(state) as arrivals:
        while not f_stop.is_set():
            seen = arrivals.messages
            for message in undelivered(state, nodes_mapping, handed):
                queue.put(message)
            arrivals.wait_messages(seen, POLL_S)


_FLOWER_PUMP = vce_api.add_messages_to_queue


class EngineNodes:
    """The simulation engine's nodes (node id -> partition id, the mapping every node's
    ``partition-id`` comes from), once its workers are up and its pump starts."""

    def __init__(self) -> None:
        self.partitions: dict[int, int] = {}
        self.changed = threading.Condition()
        self.started = self.ended = False

    def wait(self, timeout: float) -> dict[int, int] | None:
        """The nodes' partitions once the pump started; ``None`` if the engine ended first
        or ``timeout`` s passed (the server then asks the nodes, ``FedMeta.discover``)."""
        with self.changed:
            self.changed.wait_for(lambda: self.started or self.ended, timeout)
            return dict(self.partitions) if self.started else None

    def _set(self, partitions: Mapping[int, int] | None) -> None:
        with self.changed:
            if partitions is None:
                self.ended = True
            else:
                self.partitions, self.started = dict(partitions), True
            self.changed.notify_all()


@contextmanager
def message_pump(dispatch: str) -> Iterator[EngineNodes]:
    """Run the simulation engine started inside with the ``dispatch`` pump
    (``"indexed"``: one check a message; ``"flower"``: Flower's, untouched); the engine's
    nodes (``EngineNodes``) are handed over as the pump starts, so that the server need not
    ask each node which partition it holds (a query message through Ray per device)."""
    if dispatch not in DISPATCHES:
        raise ValueError(f"dispatch {dispatch!r}: one of {list(DISPATCHES)}")
    nodes, run_api, previous = EngineNodes(), vce_api.run_api, vce_api.add_messages_to_queue
    pump = _indexed_pump if dispatch == "indexed" else _FLOWER_PUMP

    def started(state: object, queue: Queue[Message], nodes_mapping: Mapping[int, int],
                f_stop: threading.Event) -> None:
        nodes._set(nodes_mapping)
        pump(state, queue, nodes_mapping, f_stop)

    def running(*args: object, **kwargs: object) -> None:
        try:
            run_api(*args, **kwargs)
        finally:
            nodes._set(None)

    vce_api.add_messages_to_queue, vce_api.run_api = started, running
    try:
        yield nodes
    finally:
        vce_api.add_messages_to_queue, vce_api.run_api = previous, run_api
