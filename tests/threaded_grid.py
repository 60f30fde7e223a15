"""A ``LocalGrid`` whose devices work in parallel threads and whose ``send_and_receive``
returns at the timeout with the replies that came in time, like Flower's own Grids: what
hanging devices need. Late replies are dropped."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable

from flwr.app import Error, Message

from local_grid import LocalGrid


class ThreadedGrid(LocalGrid):
    """Every message handled in its own thread; ``join`` waits for the late ones."""

    threads: list[threading.Thread]

    def join(self) -> None:
        """Wait for every device thread (hanging ones included) to end."""
        for thread in getattr(self, "threads", []):
            thread.join()

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        replies: queue.Queue[Message] = queue.Queue()

        def handle(message: Message) -> None:
            try:
                replies.put(self.app(message, self.contexts[message.metadata.dst_node_id]))
            except Exception as exc:  # what the SuperNode does with a ClientApp exception
                replies.put(Message(Error(code=1, reason=repr(exc)), reply_to=message))

        self.sent.extend(messages)
        for message in messages:
            thread = threading.Thread(target=handle, args=(message,), daemon=True)
            thread.start()
            self.threads = [*getattr(self, "threads", []), thread]
        deadline = None if timeout is None else time.monotonic() + timeout
        received: list[Message] = []
        while len(received) < len(messages):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                received.append(replies.get(timeout=left))
            except queue.Empty:
                break
        return received
