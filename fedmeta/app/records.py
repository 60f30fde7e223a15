"""Meta-parameters, configs and scores to and from Flower records."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from ..config import Config
from ..meta import Params

ARRAYS, CONFIG, METRICS, SCORES = "arrays", "config", "metrics", "scores"
ROUND = "server-round"  # set by FedAvg in every round's ConfigRecord
NUM_EXAMPLES = "num-examples"  # FedAvg's weighting key: episodes used
ATTEMPT = "attempt"  # which try of a round (retried after too few good replies), from 0


def to_record(params: Params) -> ArrayRecord:
    """Tensors (on any device) as an ArrayRecord, in their order."""
    return ArrayRecord.from_torch_state_dict({k: v.detach().cpu() for k, v in params.items()})


def to_params(record: ArrayRecord) -> Params:
    """An ArrayRecord as a dict of (writable, float) tensors."""
    return {k: v.clone() for k, v in record.to_torch_state_dict().items()}


def scores_record(scores: dict[str, np.ndarray]) -> ArrayRecord:
    """Per-episode score arrays (``pre_loss``, ...) as an ArrayRecord."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in scores.items()})


def config_record(cfg: Config, **extra: Any) -> ConfigRecord:
    """The whole config as flat ``section.field`` entries, plus ``extra`` entries."""
    return ConfigRecord({**cfg.to_flat(), **extra})


def array_bytes(content: RecordDict) -> int:
    """Bytes of every array a message carries (Flower's ``ArrayRecord.count_bytes``)."""
    return sum(record.count_bytes() for record in content.array_records.values())
