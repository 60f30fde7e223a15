"""The federated server's state after a round, saved so a killed run can resume.

Everything the rest of the run depends on: the config, the meta-parameters, the server
optimizer's state, the round just finished, every RNG state of the server process (Python,
NumPy, torch) and the result rows so far. Devices need nothing saved: their randomness is a
function of ``(seed, round, device)``. Written atomically (temporary file, then
``os.replace``), so a kill leaves either the previous state or the new one.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import torch_save_atomically
from .errors import DataError
from .meta import Params
from .results import Row

FORMAT = "fedmeta-server-state/1"
STATE_FILE = "server_state.pt"  # in the run's output folder


def rng_states() -> dict[str, Any]:
    """The Python, NumPy (global) and torch (CPU) RNG states, as torch can save them."""
    bit_generator = np.random.get_state(legacy=False)
    numpy_state = {**bit_generator, "state": {k: int(v) if np.isscalar(v) else
                                              torch.from_numpy(np.asarray(v).copy())
                                              for k, v in bit_generator["state"].items()}}
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``rng_states`` returned."""
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    np.random.set_state({**numpy_state, "state": {
        k: v.numpy() if isinstance(v, torch.Tensor) else v
        for k, v in numpy_state["state"].items()}})
    torch.set_rng_state(states["torch"])


def _on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (nested dicts and lists) on the CPU: a state saved
    on a GPU loads anywhere (``load_state_dict`` moves it back to the parameters' device)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


@dataclass
class ServerState:
    """The server after ``round`` (0: the initial evaluation)."""

    round: int
    config: dict[str, Any]
    params: Params
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    rows: list[Row]

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "round": self.round, "config": self.config,
                   "params": {k: v.detach().cpu().clone() for k, v in self.params.items()},
                   "optimizer": _on_cpu(self.optimizer), "rng": self.rng,
                   "rows": [dataclasses.asdict(r) for r in self.rows]}
        return torch_save_atomically(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> "ServerState":
        """Read what ``save`` wrote; a missing or foreign file is a ``DataError``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no server state to resume from (a run writes it after "
                            f"its first evaluation; start the run again)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a file that is not its own
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{path}: not a readable server state ({first})") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise DataError(f"{path}: not a fedmeta server state (expected format {FORMAT!r})")
        return cls(payload["round"], payload["config"], payload["params"],
                   payload["optimizer"], payload["rng"], [Row(**r) for r in payload["rows"]])
