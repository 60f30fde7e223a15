"""Meta-parameters, configs and scores to and from Flower records."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.constant import SType

from ..config import Config
from ..meta import Params

ARRAYS, CONFIG, METRICS, SCORES = "arrays", "config", "metrics", "scores"
ROUND = "server-round"  # set by FedAvg in every round's ConfigRecord
NUM_EXAMPLES = "num-examples"  # FedAvg's weighting key: episodes used
ATTEMPT = "attempt"  # which try of a round (retried after too few good replies), from 0


def to_record(params: Params) -> ArrayRecord:
    """Tensors (on any device) as an ArrayRecord, in their order."""
    return _record({k: from_numpy(v.detach().cpu().numpy()) for k, v in params.items()})


def _record(arrays: dict[str, Array]) -> ArrayRecord:
    """``ArrayRecord(arrays)`` without its copy of every array (a quarter of the time)."""
    record = ArrayRecord()
    for key, array in arrays.items():
        record[key] = array
    return record


def to_params(record: ArrayRecord) -> Params:
    """An ArrayRecord as a dict of (writable, float) tensors."""
    return {k: torch.from_numpy(as_numpy(v).copy()) for k, v in record.items()}


_NPY_MAGIC = b"\x93NUMPY"
_HEADERS_KEPT = 1024  # distinct headers (shapes and dtypes) kept; a run has a few dozen
_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}  # .npy header -> layout
_WRITTEN: dict[tuple[str, tuple[int, ...]], tuple[bytes, str]] = {}  # (dtype, shape) ->
# (.npy header, the dtype's name: numpy builds ``str(dtype)`` anew each time, 20 us)


def from_numpy(value: np.ndarray) -> Array:
    """``Array(value)``, byte for byte, with the ``.npy`` header of each shape and dtype
    written once: Flower's ``Array.from_numpy_ndarray`` writes it with ``np.save`` at every
    array (128 us a small array, against 20 here). Arrays that are not plain C-ordered
    numbers are written by ``np.save`` as there."""
    if not value.flags.c_contiguous or value.dtype.kind not in "biufc":
        return Array(value)
    key = value.dtype.str, value.shape
    written = _WRITTEN.get(key)
    if written is None:
        flowers = Array(value)
        written = flowers.data[:_data_offset(flowers.data)], flowers.dtype
        if len(_WRITTEN) >= _HEADERS_KEPT:
            _WRITTEN.clear()
        _WRITTEN[key] = written
    header, dtype = written
    return Array(dtype=dtype, shape=value.shape, stype=SType.NUMPY,
                 data=header + value.tobytes())


def _data_offset(data: bytes) -> int:
    """Where the array's bytes start in ``.npy`` ``data`` of format version 1 or 2."""
    start, size = (10, data[8:10]) if data[6] == 1 else (12, data[8:12])
    return start + int.from_bytes(size, "little")


def as_numpy(array: Array) -> np.ndarray:
    """``array.numpy()`` as a read-only view of the array's bytes.

    Flower's ``Array.numpy`` parses each array's ``.npy`` header with ``ast.literal_eval``:
    most of the time of decoding the small arrays of a reply (122 us an array, 2-core AMD
    EPYC). Here each distinct header (a shape and dtype) is parsed once and the data is not
    copied; anything but a plain ``.npy`` payload of exactly the header's size (another
    ``stype``, pickled objects, a truncated buffer) goes to ``array.numpy()``, which decodes
    or refuses it as Flower does.
    """
    data = array.data
    if array.stype != SType.NUMPY or not isinstance(data, bytes) or data[:6] != _NPY_MAGIC \
            or len(data) < 12 or data[6] not in (1, 2):
        return array.numpy()
    offset = _data_offset(data)
    header = data[:offset]
    layout = _HEADERS.get(header)
    if layout is None:
        stream = io.BytesIO(header)
        try:
            version = np.lib.format.read_magic(stream)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(stream)
        except ValueError:  # a malformed header: Flower's decoder says what is wrong
            return array.numpy()
        layout = dtype, tuple(shape), bool(fortran)
        if len(_HEADERS) >= _HEADERS_KEPT:
            _HEADERS.clear()
        _HEADERS[header] = layout
    dtype, shape, fortran = layout
    count = math.prod(shape)
    if dtype.hasobject or len(data) != offset + count * dtype.itemsize:
        return array.numpy()
    return np.frombuffer(data, dtype, count, offset).reshape(shape, order="F" if fortran else "C")


def scores_record(scores: dict[str, np.ndarray]) -> ArrayRecord:
    """Per-episode score arrays (``pre_loss``, ...) as an ArrayRecord."""
    return _record({k: from_numpy(np.ascontiguousarray(v)) for k, v in scores.items()})


def config_record(cfg: Config, **extra: Any) -> ConfigRecord:
    """The whole config as flat ``section.field`` entries, plus ``extra`` entries."""
    return ConfigRecord({**cfg.to_flat(), **extra})


def array_bytes(content: RecordDict) -> int:
    """Bytes of every array a message carries (Flower's ``ArrayRecord.count_bytes``)."""
    return sum(record.count_bytes() for record in content.array_records.values())
