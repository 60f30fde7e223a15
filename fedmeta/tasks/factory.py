"""From a task config to the task sources a job trains and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .episode import TaskSource
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
    raise NotImplementedError(task.kind)


def build_device_tasks(task: Any, device: int, num_devices: int, seed: int = 0) -> TaskSource:
    """Device ``device``'s private task source in a fleet of ``num_devices``.

    Sinusoid: its own amplitude and phase sub-ranges (``task.device_width`` of the whole).
    """
    if task.kind == "sinusoid":
        return device_sinusoid(_sinusoid(task), device, seed, task.device_width)
    raise NotImplementedError(task.kind)
