"""Saving and loading a meta-model: everything ``fedmeta evaluate`` needs to adapt it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import torch_save_atomically
from .errors import DataError
from .meta import MetaLearner, Params, build_learner
from .models import build_model

FORMAT = "fedmeta-checkpoint/1"


@dataclass
class Checkpoint:
    """A meta-model: the learner that trained it, its model and its meta-parameters.

    ``task`` describes the data it was trained for (for example ``{"kind": "omniglot",
    "n_way": 5, "k_shot": 1}``) so evaluation can check what it is given.
    """

    algorithm: str
    model: str
    model_kwargs: dict[str, Any]
    learner_kwargs: dict[str, Any]
    params: Params
    task: dict[str, Any] = field(default_factory=dict)

    def learner(self) -> MetaLearner:
        """A fresh learner of the saved kind over a fresh model of the saved shape."""
        model = build_model(self.model, **self.model_kwargs)
        return build_learner(self.algorithm, model, **self.learner_kwargs)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "algorithm": self.algorithm, "model": self.model,
                   "model_kwargs": self.model_kwargs, "learner_kwargs": self.learner_kwargs,
                   "params": {k: v.detach().cpu() for k, v in self.params.items()},
                   "task": self.task}
        return torch_save_atomically(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        """Read a checkpoint written by ``save``; anything else is a ``DataError``."""
        path = Path(path)
        if not path.is_file():
            what = "a folder, not a checkpoint file" if path.is_dir() else "no such file"
            raise DataError(f"checkpoint {path}: {what}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns before failing on foreign files
                payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a file that is not its own
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"checkpoint {path}: not a readable checkpoint ({first})") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise DataError(f"checkpoint {path}: not a fedmeta checkpoint (expected format "
                            f"{FORMAT!r})")
        return cls(payload["algorithm"], payload["model"], payload["model_kwargs"],
                   payload["learner_kwargs"], payload["params"], payload.get("task", {}))
