"""A Flower Grid that delivers messages to a ClientApp in this process: the server loop
without Ray, for fast tests. Node ids are scattered and replies come back in reverse order,
so code that relies on either breaks here."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE = 1


def set_task_identity() -> None:
    """What Flower's runtime sets in a ServerApp process before messages can be made."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SERVER_NODE


class LocalGrid(Grid):
    """``num_nodes`` nodes holding partitions ``0..num_nodes-1`` of one ClientApp."""

    def __init__(self, app: ClientApp, num_nodes: int, num_partitions: int | None = None):
        set_task_identity()
        self.app = app
        self.contexts = {
            9_000_001 - 7919 * p: Context(run_id=1, node_id=9_000_001 - 7919 * p,
                                          node_config={"partition-id": p,
                                                       "num-partitions": num_partitions or
                                                       num_nodes},
                                          state=RecordDict(), run_config={})
            for p in range(num_nodes)}
        self.sent: list[Message] = []

    def set_run(self, run: object) -> None:
        raise NotImplementedError

    @property
    def run(self) -> object:
        raise NotImplementedError

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            try:
                replies.append(self.app(message, self.contexts[message.metadata.dst_node_id]))
            except Exception as exc:  # what the SuperNode does with a ClientApp exception
                replies.append(Message(Error(code=1, reason=repr(exc)), reply_to=message))
        return replies[::-1]
