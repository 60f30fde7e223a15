"""Reading pickles from outside (dataset caches, device traces) without running their code.

A pickle may name any importable callable; ``load`` admits only the ``allowed`` globals
(NumPy's array and scalar reconstruction, say), so a hostile file fails instead of running.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection
from typing import BinaryIO

NUMPY_SCALARS = frozenset({("numpy.core.multiarray", "scalar"),
                           ("numpy._core.multiarray", "scalar"), ("numpy", "dtype")})
NUMPY_ARRAYS = NUMPY_SCALARS | {("numpy.core.multiarray", "_reconstruct"),
                                ("numpy._core.multiarray", "_reconstruct"),
                                ("numpy", "ndarray"),
                                ("_codecs", "encode")}  # protocol-2 bytes from Python 3


class _Restricted(pickle.Unpickler):
    def __init__(self, handle: BinaryIO, allowed: Collection[tuple[str, str]],
                 encoding: str) -> None:
        super().__init__(handle, encoding=encoding)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not among the "
                                     f"plain data, numbers and arrays allowed here")


def load(handle: BinaryIO, allowed: Collection[tuple[str, str]],
         encoding: str = "ASCII") -> object:
    """The object pickled in ``handle``, refusing every global outside ``allowed``
    (``pickle.UnpicklingError``); builtins' plain data needs none."""
    return _Restricted(handle, allowed, encoding).load()
