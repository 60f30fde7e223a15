"""A ``LocalGrid`` whose devices work in parallel threads and whose ``send_and_receive``
returns at the timeout with the replies that came in time, like Flower's own Grids: what
hanging devices need. Late replies are dropped. ``push_messages`` starts the threads;
``pull_messages`` returns the replies in the order the devices finished."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Error, Message
from local_grid import LocalGrid


class ThreadedGrid(LocalGrid):
    """Every message handled in its own thread; ``join`` waits for the late ones."""

    threads: list[threading.Thread]
    pull_interval = 0.01  # seconds between pulls of replies_as_they_come
    done: queue.Queue[Message] | None = None  # replies of pushed messages, as they finish

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        if self.done is None:
            self.done = queue.Queue()
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's Grids do
            ids.append(message.metadata.message_id)
            self.sent.append(message)
            thread = threading.Thread(target=lambda m=message: self.done.put(self.answer(m)),
                                      daemon=True)
            thread.start()
            self.threads = [*getattr(self, "threads", []), thread]
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted, ready = set(message_ids), []
        while self.done is not None and not self.done.empty():
            reply = self.done.get()
            if reply.metadata.reply_to_message_id in wanted:  # else a late one: dropped
                ready.append(reply)
        return ready

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
            except Exception as exc:  # noqa: BLE001 (as a SuperNode does)
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
