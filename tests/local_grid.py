"""A Flower Grid that delivers messages to a ClientApp in this process: the server loop
without Ray, for fast tests. Node ids are scattered and replies come back in reverse order,
so code that relies on either breaks here. ``push_messages`` answers every message at once;
``pull_messages`` hands the replies back in reverse order too."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import uuid4

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
        self.unpulled: dict[str, Message] = {}  # message id -> its reply, not pulled yet

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
        """Answer every message now, through ``send_and_receive`` (which tests' Grids
        override to record or lose messages); the replies wait to be pulled."""
        messages = list(messages)
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's Grids do
        for reply in self.send_and_receive(messages):
            self.unpulled[reply.metadata.reply_to_message_id] = reply
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        wanted = set(message_ids)
        return [self.unpulled.pop(i) for i in list(self.unpulled) if i in wanted]

    def answer(self, message: Message) -> Message:
        """The ClientApp's reply to ``message``, or the error reply a SuperNode sends."""
        try:
            return self.app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as exc:  # noqa: BLE001 (as a SuperNode does)
            return Message(Error(code=1, reason=repr(exc)), reply_to=message)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            replies.append(self.answer(message))
        return replies[::-1]
