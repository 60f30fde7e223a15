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
seed them around each call from ``secrets`` (and restore them), or from (seed, round,
device) only under ``privacy.insecure_reproducible_noise``, so that runs repeat.

Faults fail loudly (docs/privacy.md, "Secure aggregation under faults"):

- a device checks its update against the arrays it received before masking it (keys,
  shapes, dtypes, finite entries, ``0 < num-examples <= MAX_WEIGHT``) and otherwise drops
  out of the round with ``RejectedUpdate``, whose kind (``non_finite``, ``malformed``) the
  server counts;
- the server drops masked vectors of the wrong shape or type before Flower sums them,
  counts every device lost at any stage by kind (error reply: ``crashed`` unless rejected,
  no reply: ``timed_out``), forgets devices lost before masking (Flower's unmasking would
  ask every device for their key shares, and each would raise a ``KeyError``), and checks
  that every entry of the unmasked sum lies in the range honest devices can produce;
- a round the protocol could not finish, or whose sum is out of range, has no mean: the
  strategy retries or skips it as it does a plaintext round with too few good replies.
"""

from __future__ import annotations

import copy
import logging
import random
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitIns, FitRes, Parameters, Status, bytes_to_ndarray
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.client.mod import secaggplus_mod
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from ..config import PrivacyConfig
from ..meta import Params
from .records import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, ROUND, as_numpy

logger = logging.getLogger("flwr.fedmeta")

MAX_WEIGHT = 1000.0  # SecAgg+ scales each update by episodes / MAX_WEIGHT before summing
MODULUS = 2 ** 32  # SecAgg+'s modulus_range (Flower's default)
SECAGG_STREAM = 0x5EC  # rng stream of SecAgg+'s rounding and shuffling (reproducible mode)
REJECTED = "rejected its update"  # in a device's error reason: (kind) follows
INSECURE = "privacy.insecure_reproducible_noise"  # the switch, as the round config names it


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


def protocol_seed(reproducible: bool, *seed: int) -> tuple[int, ...]:
    """The seed of SecAgg+'s global draws: ``seed`` only in the insecure reproducible mode,
    otherwise 128 bits from the operating system's CSPRNG, which no config determines."""
    return seed if reproducible else (secrets.randbits(128),)


# -- device side ----------------------------------------------------------------------------
class RejectedUpdate(ValueError):
    """A device's update that must not enter the sum; the device drops out of the round."""

    def __init__(self, kind: str, problem: str) -> None:
        super().__init__(f"SecAgg+: the device {REJECTED} ({kind}): {problem}")


def update_problem(reply: Message, request: Message) -> tuple[str, str] | None:
    """``(fault kind, problem)`` of a ClientApp reply that cannot be masked and summed, by
    the arrays the device received: the same keys in order, shapes and dtypes, finite
    entries, and ``0 < num-examples <= MAX_WEIGHT`` (SecAgg+'s weight range)."""
    content = reply.content
    if set(content.array_records) != {ARRAYS} or set(content.metric_records) != {METRICS}:
        return "malformed", f"expected one ArrayRecord {ARRAYS!r} and one MetricRecord " \
                            f"{METRICS!r}"
    arrays, reference = content[ARRAYS], request.content[ARRAYS]
    if list(arrays.keys()) != list(reference.keys()):
        return "malformed", f"arrays {list(arrays.keys())} are not {list(reference.keys())}"
    for key, array in arrays.items():
        if (tuple(array.shape), array.dtype) != (tuple(reference[key].shape),
                                                 reference[key].dtype):
            return "malformed", f"array {key!r} is {array.dtype}{tuple(array.shape)}, " \
                                f"expected {reference[key].dtype}{tuple(reference[key].shape)}"
    for key, array in arrays.items():
        if not np.isfinite(as_numpy(array)).all():
            return "non_finite", f"array {key!r} is not finite"
    episodes = content[METRICS].get(NUM_EXAMPLES)
    if isinstance(episodes, (list, bool)) or episodes is None or \
            not 0 < episodes <= MAX_WEIGHT:
        return "malformed", f"{NUM_EXAMPLES}={episodes!r} is not in (0, {MAX_WEIGHT:g}]"
    return None


def _as_fitres(reply: Message, request: Message) -> Message:
    """The ClientApp's reply (``arrays`` + ``metrics``) as the FitRes secaggplus_mod reads."""
    if reply.has_error():
        return reply
    metrics = reply.content[METRICS]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(
        reply.content[ARRAYS].to_numpy_ndarrays()), int(metrics[NUM_EXAMPLES]),
        {k: float(v) for k, v in metrics.items() if k != NUM_EXAMPLES})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=request)


def _checked(reply: Message, request: Message) -> Message:
    """``_as_fitres`` of a reply that passes ``update_problem``; ``RejectedUpdate`` else."""
    problem = None if reply.has_error() else update_problem(reply, request)
    if problem:
        raise RejectedUpdate(*problem)
    return _as_fitres(reply, request)


def secagg_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ rounds, masking only updates that pass
    ``update_problem``; every other message passes through."""
    if msg.metadata.message_type != MessageType.TRAIN or \
            RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    config = msg.content.config_records.get(CONFIG, ConfigRecord())
    seed = protocol_seed(bool(config.get(INSECURE, False)), int(config.get("train.seed", 0)),
                         int(config.get(ROUND, 0)),
                         int(ctxt.node_config.get("partition-id", 0)), SECAGG_STREAM)
    with seeded_globals(*seed):
        return secaggplus_mod(msg, ctxt, lambda m, c: _checked(call_next(m, c), m))


# -- server side ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SecureMean:
    """What a SecAgg+ round unmasked, who took part, who was lost, and the wire's bytes."""

    mean: Params | None  # None: the protocol did not finish, or its sum was out of range
    devices: list[int]  # node ids whose masked update entered the sum
    metrics: list[dict[str, float]]  # their scalar metrics (num-examples included)
    bytes_down: int
    bytes_up: int
    lost: dict[int, str] = field(default_factory=dict)  # node id -> fault kind, not summed
    failure: str = ""  # why there is no mean


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
    """Flower's SecAgg+ whose round content is FedMeta's messages, not legacy FitIns, and
    which forgets devices lost before they masked anything."""

    def __init__(self, content: dict[int, RecordDict], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.content = content
        self._masking = False

    def setup_stage(self, grid, context, state) -> bool:  # noqa: ANN001 (Flower's types)
        self._masking = False
        ok = super().setup_stage(grid, context, state)
        state.nid_to_fitins = {nid: RecordDict({ARRAYS: self.content[nid][ARRAYS],
                                                CONFIG: self.content[nid][CONFIG]})
                               for nid in state.nid_to_fitins}
        return ok

    def collect_masked_vectors_stage(self, grid, context, state) -> bool:  # noqa: ANN001
        self._masking = True
        return super().collect_masked_vectors_stage(grid, context, state)

    def _check_threshold(self, state) -> bool:  # noqa: ANN001
        """After setup and key sharing, first forget the devices lost so far: devices mask
        only with neighbours that shared keys with them, so the lost ones need no
        unmasking (Flower's unmask stage lists them as dead and asks every device for
        their key shares, which none holds: each raises a ``KeyError``, the round halts).
        Overrides a private method of Flower 1.4x's ``SecAggPlusWorkflow``, called at the
        end of each stage; ``tests/test_privacy_secagg.py`` covers it."""
        if not self._masking:
            kept = set(state.active_node_ids)
            state.sampled_node_ids = kept
            state.nid_to_neighbours = {nid: neighbours & kept for nid, neighbours
                                       in state.nid_to_neighbours.items() if nid in kept}
        return super()._check_threshold(state)


class _WatchingGrid:
    """A Grid that counts the bytes of every record it carries each way, records which
    device was lost at which stage and why, and drops masked vectors that are not arrays
    of the expected shapes in ``[0, MODULUS)`` before Flower sums them."""

    def __init__(self, grid: object, shapes: list[tuple[int, ...]], nodes: list[int]
                 ) -> None:
        self.grid, self.down, self.up = grid, 0, 0
        self.node_keys = {str(n) for n in nodes}  # the key-sharing stage keys by node id
        self.shapes = [(1,), *shapes]  # SecAgg+ prepends the quantised weight
        self.lost: dict[int, tuple[str, str]] = {}  # node -> (kind, stage)

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001 (Grid's signature)
        # Each device its own copy, as over a wire: the workflow sends one RecordDict to all
        # and secaggplus_mod pops from it.
        messages = [Message(copy.deepcopy(m.content), dst_node_id=m.metadata.dst_node_id,
                            message_type=m.metadata.message_type, group_id=m.metadata.group_id)
                    for m in messages]
        self.down += sum(_bytes(m.content, self.node_keys) for m in messages)
        stage = str(messages[0].content[RECORD_KEY_CONFIGS][SecAggKey.STAGE]) \
            if messages else ""
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.up += sum(_bytes(r.content, self.node_keys) for r in replies if r.has_content())
        kept = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                match = re.search(rf"{REJECTED} \((\w+)\)", reply.error.reason)
                self._lose(node, match.group(1) if match else "crashed", stage,
                           reply.error.reason)
            elif stage == Stage.COLLECT_MASKED_VECTORS and \
                    (problem := self._masked_problem(reply)):
                self._lose(node, "malformed", stage, problem)
                continue  # as if it had not replied: its masks are removed at unmasking
            kept.append(reply)
        for node in {m.metadata.dst_node_id for m in messages} - \
                {r.metadata.src_node_id for r in replies}:
            self._lose(node, "timed_out", stage, "no reply within federation.round_timeout")
        return kept

    def _masked_problem(self, reply: Message) -> str | None:
        try:
            vectors = [bytes_to_ndarray(b) for b in reply.content.config_records[
                RECORD_KEY_CONFIGS][SecAggKey.MASKED_PARAMETERS]]
        except Exception as exc:  # noqa: BLE001 (whatever a device sent)
            return f"no masked vector: {exc!r}"
        shapes = [v.shape for v in vectors]
        if shapes != self.shapes:
            return f"masked vector of shapes {shapes}, expected {self.shapes}"
        if not all(np.issubdtype(v.dtype, np.integer) and (v.size == 0 or (
                v.min() >= 0 and v.max() < MODULUS)) for v in vectors):
            return f"masked vector not of integers in [0, {MODULUS})"
        return None

    def _lose(self, node: int, kind: str, stage: str, why: str) -> None:
        logger.warning("SecAgg+ stage %s: lost node %d (%s): %s", stage, node, kind, why)
        self.lost.setdefault(node, (kind, stage))


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


def out_of_range(mean: Params, episodes: list[float], privacy: PrivacyConfig) -> str | None:
    """Why ``mean`` cannot be the unmasked mean of ``len(episodes)`` updates that SecAgg+
    clipped and quantised, or ``None``: each device adds ``w * x`` clipped to ``[-range,
    range]`` (``w``: its quantised weight), so every entry of the weighted sum lies within
    ``n * range`` plus the rounding (one level a device)."""
    levels, span = privacy.secagg_quantization_range, privacy.secagg_clipping_range
    total = sum(round(e / MAX_WEIGHT * levels) / levels for e in episodes)
    bound = len(episodes) * (span + 2 * span / levels)
    for key, tensor in mean.items():
        largest = float((tensor.double() * total).abs().max()) if tensor.numel() else 0.0
        if not largest <= bound:  # also for NaN
            return f"entry of {key!r} times the weights, {largest:.4g}, outside [-{bound:.4g}, " \
                   f"{bound:.4g}]: a device put values outside the protocol's range in"
    return None


def secure_mean(grid: object, messages: list[Message], privacy: PrivacyConfig,
                *seed: int, timeout: float | None = None) -> SecureMean:
    """Run one SecAgg+ round over ``messages`` (FedMeta's train messages, one per device),
    waiting ``timeout`` seconds at each of its four stages."""
    content = {m.metadata.dst_node_id: m.content for m in messages}
    first = messages[0].content[ARRAYS]
    strategy = _OneRound(grid, list(content))
    watching = _WatchingGrid(grid, [tuple(a.shape) for a in first.values()], list(content))
    server_round = int(messages[0].content[CONFIG][ROUND])
    state = RecordDict({MAIN_PARAMS_RECORD: first,
                        MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: server_round})})
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state,
                                    run_config={}), strategy=strategy)
    workflow = _Workflow(content, num_shares=privacy.secagg_shares,
                         reconstruction_threshold=privacy.secagg_threshold,
                         max_weight=MAX_WEIGHT, clipping_range=privacy.secagg_clipping_range,
                         quantization_range=privacy.secagg_quantization_range,
                         modulus_range=MODULUS, timeout=timeout)
    failure = ""
    with seeded_globals(*protocol_seed(privacy.insecure_reproducible_noise, *seed,
                                       server_round, SECAGG_STREAM)):
        try:
            workflow(watching, context)
        except Exception as exc:  # noqa: BLE001 (Flower's errors become a failed round)
            logger.error("round %d: SecAgg+ failed inside Flower", server_round,
                         exc_info=exc)
            failure, strategy.results = f"Flower raised {exc!r}", []
    devices = [proxy.node_id for proxy, _ in strategy.results]
    lost = {node: kind for node, (kind, _) in watching.lost.items() if node not in devices}
    if not strategy.results:
        return SecureMean(None, [], [], watching.down, watching.up, lost,
                          failure or "SecAgg+ halted: too few devices left for its threshold")
    arrays = parameters_to_ndarrays(strategy.results[0][1].parameters)
    mean = {k: torch.as_tensor(a, dtype=torch.float32)
            for k, a in zip(first.keys(), arrays, strict=True)}
    metrics = [{NUM_EXAMPLES: float(res.num_examples), **res.metrics}
               for _, res in strategy.results]
    problem = out_of_range(mean, [m[NUM_EXAMPLES] for m in metrics], privacy)
    if problem:
        logger.error("round %d: the unmasked SecAgg+ sum is corrupt: %s", server_round, problem)
        return SecureMean(None, devices, metrics, watching.down, watching.up, lost, problem)
    return SecureMean(mean, devices, metrics, watching.down, watching.up, lost)
