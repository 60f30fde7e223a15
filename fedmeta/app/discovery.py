"""Which node is which device: ask every node for its partition until all have answered.

Under load a device can take long to answer its first message: Ray's workers start (and
import torch) when the first messages arrive, and a real SuperNode starts a ClientApp
process per message. So nodes that have not answered are asked again, with a wait that
doubles from ``first_wait`` (30 s) until ``federation.discovery_timeout`` runs out, and nodes
that connect late are asked when they appear. The waits do not follow the round timeout: a
short one would flood a slow-starting node with queries (each one more message for Ray's
workers to drain, or one more ClientApp process on a SuperNode), and a wait costs nothing
once every node has answered. A failure says which nodes and partitions did not answer and
what to change.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from ..errors import FedmetaError
from .client_app import PARTITION

logger = logging.getLogger("flwr.fedmeta")

FIRST_WAIT_S = 30.0  # the first ask's wait for replies; doubled at each ask after it


@dataclass
class Found:
    """Answers so far: node id -> (partition id, number of partitions), and the nodes
    whose reply said nothing usable (node id -> why)."""

    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    asks: int = 0


def _read(reply: Message) -> tuple[int, int] | str:
    """``(partition, num_partitions)`` from a query reply, or what is wrong with it."""
    if reply.has_error():
        return f"error {reply.error.code}: {reply.error.reason}"
    if PARTITION not in reply.content.config_records:
        return "no partition in its reply"
    info = reply.content[PARTITION]
    try:
        return int(info["partition-id"]), int(info["num-partitions"])
    except (KeyError, TypeError, ValueError):
        return f"a malformed partition record {dict(info)!r}"


def ask_partitions(grid: Grid, want: Callable[[Found], int | None], timeout_s: float,
                   ask_wait: float = math.inf, first_wait: float = FIRST_WAIT_S,
                   found: Found | None = None) -> Found:
    """Ask nodes that have not answered for their partition, again and again, until
    ``want(found)`` answers have come (``None``: not known yet) or ``timeout_s`` passes;
    one ask waits ``first_wait``, doubled at each ask, at most ``ask_wait``."""
    found = found or Found()
    deadline, wait = time.monotonic() + timeout_s, first_wait
    while True:
        target = want(found)
        if target is not None and len(found.partitions) >= target:
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            return found
        pending = [n for n in sorted(grid.get_node_ids()) if n not in found.partitions]
        if not pending:  # every connected node answered; wait for more to connect
            time.sleep(min(0.2, left))
            continue
        ask = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
               for n in pending]
        found.asks += 1
        began, this_wait, refused = time.monotonic(), min(wait, ask_wait, left), False
        for reply in grid.send_and_receive(ask, timeout=this_wait):
            node, answer = reply.metadata.src_node_id, _read(reply)
            if isinstance(answer, str):
                if node not in found.refused:
                    logger.warning("node %d did not say which partition it holds (%s); "
                                   "asking it again", node, answer)
                found.refused[node], refused = answer, True
            else:
                found.partitions[node] = answer
                found.refused.pop(node, None)
        if refused:  # an error comes back at once: do not ask again before the wait is over
            time.sleep(max(0.0, began + this_wait - time.monotonic()))
        wait = min(2 * wait, ask_wait)


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``"0-2, 5"``."""
    out: list[str] = []
    for v in sorted(values):
        if out and out[-1].split("-")[-1] == str(v - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def missing_message(grid: Grid, found: Found, num_devices: int, timeout_s: float) -> str:
    """What did not answer within ``timeout_s``, and what to change."""
    connected = sorted(grid.get_node_ids())
    silent = [n for n in connected if n not in found.partitions]
    held = {p for p, _ in found.partitions.values()}
    absent = [p for p in range(num_devices) if p not in held]
    parts = [f"{len(found.partitions)} of {num_devices} devices said which partition they "
             f"hold within federation.discovery_timeout={timeout_s:g} s ({found.asks} asks)"]
    if absent:
        parts.append(f"partitions {_ranges(absent)} missing")
    if silent:
        shown = ", ".join(map(str, silent[:10])) + (", ..." if len(silent) > 10 else "")
        why = {found.refused[n] for n in silent if n in found.refused}
        parts.append(f"{len(silent)} connected nodes did not answer (node ids {shown})"
                     + (f"; they replied: {sorted(why)[0]}" if why else ""))
    if len(connected) < num_devices:
        parts.append(f"only {len(connected)} of {num_devices} SuperNodes are connected")
    hint = ("if the host is busy (Ray workers or ClientApps slow to start), raise "
            "federation.discovery_timeout (e.g. --run-config "
            f"\"federation.discovery_timeout={max(2 * timeout_s, 600):g}\" or "
            f"--set federation.discovery_timeout={max(2 * timeout_s, 600):g}); otherwise "
            "check those SuperNodes' logs")
    return "device discovery failed: " + "; ".join(parts) + "; " + hint


class DiscoveryError(FedmetaError):
    """Not every device said which partition it holds in time."""
