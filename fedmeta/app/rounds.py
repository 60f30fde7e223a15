"""The server's loop of rounds: Flower's ``Strategy.start`` loop, plus what reliability
needs: start at a later round (resume), retry a round that got too few good replies, and
call ``end_of_round`` after each round (where the server state is saved). A round's training
replies reach the strategy one at a time as they arrive (``fedmeta.app.fold``), so it can fold
them into the aggregate instead of holding them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from .fold import replies_as_they_come
from .records import ATTEMPT

if TYPE_CHECKING:
    from .strategy import FedMeta


def run_rounds(strategy: FedMeta, grid: Grid, arrays: ArrayRecord, first_round: int,
               num_rounds: int, timeout: float, train_config: ConfigRecord,
               evaluate_config: ConfigRecord, end_of_round: Callable[[int], None]) -> Result:
    """Rounds ``first_round..num_rounds``: train (retrying while the strategy says
    ``retried``), evaluate, ``end_of_round(round)``."""
    result = Result(arrays=arrays)
    for server_round in range(first_round, num_rounds + 1):
        attempt = 0
        while True:
            train_config[ATTEMPT] = attempt
            replies = replies_as_they_come(
                grid, strategy.configure_train(server_round, arrays, train_config, grid),
                timeout)
            arrays, metrics = strategy.aggregate_train(server_round, replies)
            if strategy.status[server_round] != "retried":
                break
            attempt += 1
        if metrics is not None:
            result.train_metrics_clientapp[server_round] = metrics
        evaluation = strategy.aggregate_evaluate(server_round, grid.send_and_receive(
            strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout=timeout))
        if evaluation is not None:
            result.evaluate_metrics_clientapp[server_round] = evaluation
        result.arrays = arrays
        end_of_round(server_round)
    return result
