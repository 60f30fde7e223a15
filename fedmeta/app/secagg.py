"""Secure aggregation of meta-updates with Flower's own SecAgg+ (Bell et al. 2020).

What Flower 1.41 lacks: SecAgg+ exists only for its legacy API. The server side,
``flwr.server.workflow.SecAggPlusWorkflow``, needs a ``LegacyContext`` holding a legacy
``flwr.server.strategy.Strategy`` (``configure_fit``/``aggregate_fit`` over ``ClientProxy``
objects); the device side, ``flwr.client.mod.secaggplus_mod``, is a Message-API mod but reads
the ClientApp's reply as a legacy ``FitRes`` (``fitres.parameters``, ``fitres.num_examples``,
``fitres.metrics``). There is no SecAgg+ for Message-API strategies such as FedAvg in
``flwr.serverapp.strategy``.

So we run Flower's workflow and mod unchanged, through two thin adapters: on the server, a
one-round legacy strategy hands the workflow FedMeta's sampled devices and their round
content, and keeps what it unmasks (the episode-weighted mean pseudo-gradient); on the
device, ``secagg_mod`` turns the ClientApp's reply into a ``FitRes`` for ``secaggplus_mod``.
The server only ever sees masked, quantised vectors and the sum; the devices' scalar metrics
(their pre/post losses) still travel in the clear.

Quantisation: entries are clipped to ``[-secagg_clipping_range, secagg_clipping_range]`` and
stochastically rounded to ``secagg_quantization_range`` levels; the mean is off by at most
``n * 2 * range / levels / sum(weights / max_weight)`` per entry (n devices). Flower draws
that rounding and the neighbour shuffle from the global ``numpy``/``random`` generators; we
seed them from (seed, round, device) around each call and restore them, so runs repeat.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitIns, FitRes, Parameters, Status
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.client.mod import secaggplus_mod
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from ..config import PrivacyConfig
from ..meta import Params
from .records import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, ROUND

MAX_WEIGHT = 1000.0  # SecAgg+ scales each update by episodes / MAX_WEIGHT before summing
SECAGG_STREAM = 0x5EC  # rng stream of SecAgg+'s rounding and shuffling


@contextmanager
def seeded_globals(*seed: int) -> Iterator[None]:
    """Seed numpy's and Python's global generators for a block, then restore them."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(np.random.SeedSequence(list(seed)).generate_state(1)[0])
    random.seed(int(np.random.SeedSequence([*seed, 1]).generate_state(1)[0]))
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# -- device side ----------------------------------------------------------------------------
def _as_fitres(reply: Message, request: Message) -> Message:
    """The ClientApp's reply (``arrays`` + ``metrics``) as the FitRes secaggplus_mod reads."""
    if reply.has_error():
        return reply
    metrics = reply.content[METRICS]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(
        reply.content[ARRAYS].to_numpy_ndarrays()), int(metrics[NUM_EXAMPLES]),
        {k: float(v) for k, v in metrics.items() if k != NUM_EXAMPLES})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=request)


def secagg_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ rounds; every other message passes through."""
    if msg.metadata.message_type != MessageType.TRAIN or \
            RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    config = msg.content.config_records.get(CONFIG, ConfigRecord())
    seed = (int(config.get("train.seed", 0)), int(config.get(ROUND, 0)),
            int(ctxt.node_config.get("partition-id", 0)), SECAGG_STREAM)
    with seeded_globals(*seed):
        return secaggplus_mod(msg, ctxt, lambda m, c: _as_fitres(call_next(m, c), m))


# -- server side ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SecureMean:
    """What a SecAgg+ round unmasked, who took part, and what it cost on the wire."""

    mean: Params | None
    devices: list[int]  # node ids whose masked update entered the sum
    metrics: list[dict[str, float]]  # their scalar metrics (num-examples included)
    bytes_down: int
    bytes_up: int


class _OneRound(LegacyFedAvg):
    """The legacy strategy SecAggPlusWorkflow drives: FedMeta's devices, the unmasked sum."""

    def __init__(self, grid: object, nodes: list[int]) -> None:
        super().__init__()
        self.grid, self.nodes = grid, nodes
        self.results: list[tuple[GridClientProxy, FitRes]] = []

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: object) -> list[tuple[GridClientProxy, FitIns]]:
        return [(GridClientProxy(n, self.grid, 0), FitIns(parameters, {})) for n in self.nodes]

    def aggregate_fit(self, server_round: int, results: list, failures: list
                      ) -> tuple[Parameters | None, dict]:
        self.results = results
        return (results[0][1].parameters if results else None), {}


class _Workflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ whose round content is FedMeta's messages, not legacy FitIns."""

    def __init__(self, content: dict[int, RecordDict], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.content = content

    def setup_stage(self, grid, context, state) -> bool:  # noqa: ANN001 (Flower's types)
        ok = super().setup_stage(grid, context, state)
        state.nid_to_fitins = {nid: RecordDict({ARRAYS: self.content[nid][ARRAYS],
                                                CONFIG: self.content[nid][CONFIG]})
                               for nid in state.nid_to_fitins}
        return ok


class _CountingGrid:
    """A Grid that counts the bytes of every record it carries each way."""

    def __init__(self, grid: object, nodes: list[int]) -> None:
        self.grid, self.down, self.up = grid, 0, 0
        self.node_keys = {str(n) for n in nodes}  # the key-sharing stage keys by node id

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001 (Grid's signature)
        # Each device its own copy, as over a wire: the workflow sends one RecordDict to all
        # and secaggplus_mod pops from it.
        messages = [Message(copy.deepcopy(m.content), dst_node_id=m.metadata.dst_node_id,
                            message_type=m.metadata.message_type, group_id=m.metadata.group_id)
                    for m in messages]
        self.down += sum(_bytes(m.content, self.node_keys) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.up += sum(_bytes(r.content, self.node_keys) for r in replies if r.has_content())
        return replies


def _bytes(content: RecordDict, node_keys: set[str] = frozenset()) -> int:
    """Flower's ``count_bytes`` of arrays and metrics; config values counted as it does
    (8 B a number, 1 B a bool, the length of str/bytes, plus keys), but without failing on
    an empty string as ``ConfigRecord.count_bytes`` does. A key that is a node id (in
    ``node_keys``) counts 8 B, as the id does as a number: the count must not depend on
    the digits of the ids the runtime happened to assign."""
    def value(v: object) -> int:
        if isinstance(v, list):
            return sum(value(x) for x in v)
        if isinstance(v, bool):
            return 1
        return len(v) if isinstance(v, (str, bytes)) else 8

    return (sum(r.count_bytes() for r in content.array_records.values())
            + sum(r.count_bytes() for r in content.metric_records.values())
            + sum((8 if k in node_keys else len(k)) + value(v)
                  for r in content.config_records.values() for k, v in r.items()))


def secure_mean(grid: object, messages: list[Message], privacy: PrivacyConfig,
                *seed: int) -> SecureMean:
    """Run one SecAgg+ round over ``messages`` (FedMeta's train messages, one per device)."""
    content = {m.metadata.dst_node_id: m.content for m in messages}
    first = messages[0].content[ARRAYS]
    strategy, counting = _OneRound(grid, list(content)), _CountingGrid(grid, list(content))
    server_round = int(messages[0].content[CONFIG][ROUND])
    state = RecordDict({MAIN_PARAMS_RECORD: first,
                        MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: server_round})})
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state,
                                    run_config={}), strategy=strategy)
    workflow = _Workflow(content, num_shares=privacy.secagg_shares,
                         reconstruction_threshold=privacy.secagg_threshold,
                         max_weight=MAX_WEIGHT, clipping_range=privacy.secagg_clipping_range,
                         quantization_range=privacy.secagg_quantization_range)
    with seeded_globals(*seed, server_round, SECAGG_STREAM):
        workflow(counting, context)
    if not strategy.results:
        return SecureMean(None, [], [], counting.down, counting.up)
    arrays = parameters_to_ndarrays(strategy.results[0][1].parameters)
    mean = {k: torch.as_tensor(a, dtype=torch.float32)
            for k, a in zip(first.keys(), arrays, strict=True)}
    devices = [proxy.node_id for proxy, _ in strategy.results]
    metrics = [{NUM_EXAMPLES: float(res.num_examples), **res.metrics}
               for _, res in strategy.results]
    return SecureMean(mean, devices, metrics, counting.down, counting.up)
