"""From a task config to the task sources a job trains and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .episode import TaskSource
from .fewshot import FewShotTaskSource
from .omniglot import OmniglotData, load_omniglot, split_by_alphabet
from .sinusoid import SinusoidTasks
from .sinusoid_fleet import device_sinusoid


@dataclass(frozen=True)
class Tasks:
    """Meta-train and held-out task sources, the model that fits them, and a description."""

    train: TaskSource
    test: TaskSource
    model: str
    model_kwargs: dict[str, Any]
    info: dict[str, Any]


def _sinusoid(task: Any) -> SinusoidTasks:
    return SinusoidTasks(task.k_shot, task.q_query, tuple(task.amplitude), tuple(task.phase),
                         tuple(task.x_range))


def build_tasks(task: Any, seed: int = 0) -> Tasks:
    """The ``Tasks`` of a ``config.TaskConfig`` for central training."""
    if task.kind == "sinusoid":
        source = _sinusoid(task)
        info = {"kind": "sinusoid", "k_shot": task.k_shot, "q_query": task.q_query,
                "amplitude": list(task.amplitude), "phase": list(task.phase)}
        return Tasks(source, source, "mlp", {}, info)
    train, test = _omniglot_split(task, seed)
    info = {"kind": "omniglot", "n_way": task.n_way, "k_shot": task.k_shot,
            "q_query": task.q_query, "rotations": task.rotations,
            "train_alphabets": train.alphabets, "test_alphabets": test.alphabets}
    return Tasks(FewShotTaskSource(train.images, train.character, task.n_way, task.k_shot,
                                   task.q_query, task.rotations),
                 FewShotTaskSource(test.images, test.character, task.n_way, task.k_shot,
                                   task.q_query),
                 "conv4", {"n_way": task.n_way}, info)


def _omniglot_split(task: Any, seed: int) -> tuple[OmniglotData, OmniglotData]:
    """Meta-train and held-out alphabets of the Omniglot zips in ``task.data_dir``."""
    data = load_omniglot(task.data_dir or None)
    return split_by_alphabet(data, task.test_alphabets, seed=seed)


def build_device_tasks(task: Any, device: int, num_devices: int, seed: int = 0) -> TaskSource:
    """Device ``device``'s private task source in a fleet of ``num_devices``.

    Sinusoid: its own amplitude and phase sub-ranges (``task.device_width`` of the whole).
    """
    if task.kind == "sinusoid":
        return device_sinusoid(_sinusoid(task), device, seed, task.device_width)
    raise NotImplementedError(task.kind)
