"""The one typed, validated configuration of a fedmeta job.

A config is sections of typed fields (``task.n_way``, ``meta.inner_lr``, ...). It is read from
TOML, overridden by ``key=value`` strings, and every field is checked here, before any work
starts: a bad value raises ``ConfigError`` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError
from .meta import ALGORITHMS
from .meta.trainer import OPTIMIZERS

TASK_KINDS = ("sinusoid", "omniglot")
PARTITIONS = ("drawer", "alphabet", "dirichlet")


@dataclass
class TaskConfig:
    """The task distribution: sinusoid regression or N-way K-shot Omniglot."""

    kind: str = "sinusoid"
    k_shot: int = 10
    q_query: int = 10
    n_way: int = 5
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    data_dir: str = ""
    rotations: bool = False
    test_alphabets: int = 2
    device_width: float = 0.3
    partition: str = "drawer"
    dirichlet_alpha: float = 0.5


@dataclass
class MetaConfig:
    """The meta-learning algorithm and its inner loop."""

    algorithm: str = "maml"
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_steps: int = 10


@dataclass
class TrainConfig:
    """Central meta-training: outer optimizer, iterations, meta-batch, evaluation."""

    meta_lr: float = 1e-3
    meta_optimizer: str = "adam"
    meta_batch: int = 25
    iterations: int = 1000
    eval_episodes: int = 600
    seed: int = 0


@dataclass
class Config:
    """A whole job's configuration, section by section."""

    task: TaskConfig = field(default_factory=TaskConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples as lists), as written to ``config.json``/TOML."""
        return {name: {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in _sections()}


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """``value`` as type ``kind`` or a ``ConfigError`` naming ``name``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(name, value, "true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(name, value, "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(name, value, "an integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(name, value, "a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, value, "a string")
    if kind == tuple[float, float]:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return tuple(_coerce(name, v, float) for v in value)
        raise ConfigError(name, value, "a pair of numbers like [0.1, 5.0]")
    raise TypeError(f"no coercion for {kind}")  # a field type this module forgot


def _check(cfg: Config) -> None:
    """Cross-field and range checks; the first failure raises ``ConfigError``."""
    t, m, tr = cfg.task, cfg.meta, cfg.train
    choices = {"task.kind": (t.kind, TASK_KINDS), "task.partition": (t.partition, PARTITIONS),
               "meta.algorithm": (m.algorithm, ALGORITHMS),
               "train.meta_optimizer": (tr.meta_optimizer, OPTIMIZERS)}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(name, value, f"one of {sorted(allowed)}")
    positive_ints = {"task.k_shot": t.k_shot, "task.q_query": t.q_query,
                     "task.n_way": t.n_way, "meta.inner_steps": m.inner_steps,
                     "meta.eval_steps": m.eval_steps, "train.meta_batch": tr.meta_batch,
                     "train.iterations": tr.iterations, "train.eval_episodes": tr.eval_episodes}
    for name, value in positive_ints.items():
        if value < 1:
            raise ConfigError(name, value, "an integer >= 1")
    if not 0.0 < t.device_width <= 1.0:
        raise ConfigError("task.device_width", t.device_width, "a number in (0, 1]")
    for name, value in {"meta.inner_lr": m.inner_lr, "train.meta_lr": tr.meta_lr,
                        "task.dirichlet_alpha": t.dirichlet_alpha}.items():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(name, value, "a finite number > 0")
    if t.kind == "omniglot" and t.n_way < 2:
        raise ConfigError("task.n_way", t.n_way, "an integer >= 2 for classification")
    if t.test_alphabets < 1:
        raise ConfigError("task.test_alphabets", t.test_alphabets, "an integer >= 1")
    if t.kind == "sinusoid" and m.algorithm == "protonet":
        raise ConfigError("meta.algorithm", m.algorithm,
                          "a gradient-based learner for sinusoid regression "
                          "(protonet classifies)")
    for name, (low, high) in {"task.amplitude": t.amplitude, "task.phase": t.phase,
                              "task.x_range": t.x_range}.items():
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ConfigError(name, [low, high], "finite [low, high] with low <= high")
    if t.amplitude[0] < 0:
        raise ConfigError("task.amplitude", list(t.amplitude), "amplitudes >= 0")


def from_dict(data: dict[str, Any]) -> Config:
    """A validated ``Config`` from nested ``{section: {field: value}}``; unknown keys fail."""
    if not isinstance(data, dict):
        raise ConfigError("config", data, "a table of sections")
    sections = _sections()
    built = {}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(name, value, f"a section among {sorted(sections)}")
        if not isinstance(value, dict):
            raise ConfigError(name, value, "a table of fields")
    for name, cls in sections.items():
        given = data.get(name, {})
        hints = get_type_hints(cls)
        for key in given:
            if key not in hints:
                raise ConfigError(f"{name}.{key}", given[key],
                                  f"a field of [{name}] among {sorted(hints)}")
        built[name] = cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in given.items()})
    cfg = Config(**built)
    _check(cfg)
    return cfg


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with ``section.field=value`` strings applied (values parsed later)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError("--set", item, "section.field=value, e.g. meta.inner_lr=0.01")
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ConfigError(section, out[section], "a table of fields")
        out[section][name] = value.strip()
    return out


def load(path: str | Path | None = None, overrides: list[str] | None = None,
         base: dict[str, Any] | None = None) -> Config:
    """Read a TOML file (or start from ``base``/defaults), apply overrides, validate."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("--config", str(path), "an existing TOML file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
            raise ConfigError("--config", str(path), f"a valid TOML file ({exc})") from None
    return from_dict(apply_overrides(data, overrides or []))
