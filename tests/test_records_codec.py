"""fedmeta's ``.npy`` codec for Flower's arrays (``fedmeta.app.records``): ``from_numpy``
writes exactly the bytes of Flower's ``Array(ndarray)`` and ``as_numpy`` reads exactly what
``Array.numpy()`` reads, for every dtype and shape tried, and leaves what it does not handle
(pickled objects, odd layouts, truncated or malformed data) to Flower, errors included."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedmeta.app.records import as_numpy, from_numpy, to_params, to_record

DTYPES = ["float32", "float64", "float16", ">f4", "int8", "int64", "uint16", "bool",
          "complex64"]
SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 0, 4), (2, 3, 4, 5)]


def _value(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(rng.standard_normal(shape) * 100).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_writes_flowers_bytes_and_reads_flowers_arrays(dtype: str) -> None:
    for seed, shape in enumerate(SHAPES * 2):  # twice: the second time from the caches
        value = _value(dtype, shape, seed)
        ours, flowers = from_numpy(value), Array(value)
        assert (ours.dtype, ours.shape, ours.stype, ours.data) == \
            (flowers.dtype, flowers.shape, flowers.stype, flowers.data)
        read, expected = as_numpy(flowers), flowers.numpy()
        assert read.dtype == expected.dtype and read.shape == expected.shape
        assert read.tobytes() == expected.tobytes()
        assert not read.flags.writeable  # a view of the message's bytes


@pytest.mark.parametrize("value", [
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2],  # not contiguous
    np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),  # structured
    np.array(["ab", "c"]),
])
def test_other_layouts_are_written_and_read_as_flower_does(value: np.ndarray) -> None:
    ours, flowers = from_numpy(value), Array(value)
    assert ours.data == flowers.data
    read = as_numpy(flowers)
    assert read.dtype == value.dtype and np.array_equal(read, value)
    assert np.isfortran(read) == np.isfortran(flowers.numpy())


def test_version_two_headers_are_read() -> None:
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, value, version=(2, 0))
    array = Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray", data=buffer.getvalue())
    assert np.array_equal(as_numpy(array), value)


def _raw(data: bytes, stype: str = "numpy.ndarray") -> Array:
    return Array(dtype="float32", shape=(3,), stype=stype, data=data)


def test_what_flower_refuses_is_refused_with_flowers_error() -> None:
    good = Array(np.arange(3, dtype=np.float32)).data
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = [_raw(good[:-2]),  # truncated
             _raw(good + b"\x00"),  # trailing bytes
             _raw(good[:10] + b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,)"
                  + good[64:]),  # a broken header
             _raw(pickled.getvalue()),  # objects: never unpickled
             _raw(good, stype="torch.Tensor")]
    for array in cases:
        try:
            expected: object = array.numpy()
        except Exception as error:  # noqa: BLE001 (whatever Flower raises, we raise)
            with pytest.raises(type(error)):
                as_numpy(array)
        else:
            assert np.array_equal(as_numpy(array), expected)


def test_params_travel_unchanged_and_writable() -> None:
    torch.manual_seed(0)
    params = {"w": torch.randn(4, 3), "b": torch.randn(3).double(), "s": torch.tensor(2.5)}
    record = to_record(params)
    assert [a.data for a in record.values()] == \
        [a.data for a in ArrayRecord.from_torch_state_dict(params).values()]
    back = to_params(record)
    assert list(back) == list(params)
    for key, value in params.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value)
        back[key] += 1  # writable, and a copy: the record is untouched
    assert torch.equal(to_params(record)["w"], params["w"])
