"""The one typed, validated configuration of a fedmeta job.

A config is sections of typed fields (``task.n_way``, ``meta.inner_lr``, ...). It is read from
TOML, overridden by ``key=value`` strings, and every field is checked here, before any work
starts: a bad value raises ``ConfigError`` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from .errors import ConfigError
from . import fleet as fleet_module
from .federated import FEDERATED_ALGORITHMS, SERVER_OPTIMIZERS
from .meta import ALGORITHMS
from .meta.base import PRECISIONS
from .meta.trainer import OPTIMIZERS
from .tasks.benchmarks import DATASETS as BENCHMARKS, IMAGE_SIZE

if TYPE_CHECKING:
    import torch

TASK_KINDS = ("sinusoid", "omniglot", "hf", "hf-text", "fewshot")
HF_PROTOCOLS = ("few-shot", "fedmeta")  # task.protocol of kind hf (docs/data.md)
AUTO = "auto"  # a federation field that takes its algorithm's default
PARTITIONS = ("drawer", "alphabet", "dirichlet", "sampled", "class")
KIND_PARTITIONS = {"omniglot": ("drawer", "alphabet", "dirichlet", "sampled"),
                   "fewshot": ("class", "dirichlet", "sampled")}  # task.partition by kind
EPISODES = ("fixed", "meta-dataset")  # task.episodes (docs/data.md)
EVAL_SPLITS = ("val", "test")  # task.eval_split of kind fewshot
AGGREGATIONS = ("mean", "median", "trimmed-mean", "norm-bound", "norm-filter",
                "norm-filter-bound", "norm-direction-filter", "multi-krum")
SHORT_ROUNDS = ("retry", "skip")  # what a round with too few good replies does
BYZANTINE_MODES = ("sign-flip", "scale", "omit")
FAULT_KINDS = ("crash", "hang", "nan", "malformed", "byzantine")
DISPATCHES = ("indexed", "flower")  # simulation.dispatch: fedmeta.app.dispatch


@dataclass
class TaskConfig:
    """The task distribution: sinusoid regression, N-way K-shot Omniglot, or N-way K-shot
    episodes of a Hugging Face image dataset split into devices (``hf``), next-character
    prediction on a text dataset split by a natural id (``hf-text``), or a few-shot
    benchmark from its standard files (``fewshot``: miniImageNet, CIFAR-FS, FC100; fixed or
    Meta-Dataset-style varying episodes; docs/data.md)."""

    kind: str = "sinusoid"
    k_shot: int = 10
    q_query: int = 10
    n_way: int = 5
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    data_dir: str = ""
    rotations: bool = False
    augment: bool = False
    test_alphabets: int = 2  # held out, drawn with train.seed (unless test_alphabet_names)
    test_alphabet_names: str = ""  # comma-separated held-out alphabets; set: the count is unused
    exclude_alphabets: str = ""  # comma-separated alphabets neither trained on nor held out
    device_width: float = 0.3
    partition: str = "drawer"
    dirichlet_alpha: float = 0.5
    device_classes: int = 10  # sampled partition: characters each device draws
    # kind "hf" (fedmeta.tasks.hf_images, docs/data.md): a Hugging Face image dataset
    dataset: str = "flwrlabs/femnist"  # hub name, or a local folder of its files
    split: str = "train"
    image_column: str = "image"
    label_column: str = "character"
    partition_by: str = "writer_id"  # natural id column, "dirichlet" or "pathological"
    invert: bool = True  # dark ink on light paper (FEMNIST) -> ink 1.0; false: as is
    protocol: str = "few-shot"  # hf: "few-shot" (N-way K-shot) or "fedmeta" (device = task)
    support_fraction: float = 0.2  # protocol fedmeta: support share of a device's images
    min_device_images: int = 10  # protocol fedmeta: fewer and a natural-id device is left out
    # kind "hf-text" (fedmeta.tasks.hf_text, docs/data.md): next-character prediction, FedMeta
    # protocol, with the fields above (label_column: the next character; partition_by: a column)
    text_column: str = "x"  # the 80-character window
    # kind "fewshot" (fedmeta.tasks.benchmarks, docs/data.md): task.dataset "miniimagenet",
    # "cifar-fs" or "fc100" from its standard files in task.data_dir; meta-training on the
    # train split's classes, evaluation (and held-out devices) on eval_split's
    eval_split: str = "test"  # fewshot: "test" or "val"
    episodes: str = "fixed"  # fewshot: "fixed" (n_way, k_shot, q_query) or "meta-dataset"
    min_way: int = 5  # meta-dataset episodes: the fewest classes (n_way: the most)
    max_support: int = 500  # meta-dataset episodes: the most support images of an episode


@dataclass
class MetaConfig:
    """The meta-learning algorithm and its inner loop."""

    algorithm: str = "maml"
    inner_lr: float = 0.01
    inner_steps: int = 1
    eval_steps: int = 10


@dataclass
class TrainConfig:
    """Central meta-training: outer optimizer, iterations, meta-batch, evaluation; and
    ``device``, where every entry point computes (``resolve_device``); ``precision``:
    ``bfloat16`` runs evaluation and first-order meta-updates under bfloat16 autocast
    (``fedmeta.meta.base.MetaLearner``), ``float32`` (default) does not; ``batched``: a
    meta-batch's episodes run together (``true``), one at a time (``false``), or ``auto``
    (default): together on a GPU, one at a time on the CPU (``MetaLearner.batched``)."""

    meta_lr: float = 1e-3
    meta_optimizer: str = "adam"
    meta_batch: int = 25
    iterations: int = 1000
    eval_episodes: int = 600
    seed: int = 0
    device: str = AUTO  # auto | cpu | cuda | cuda:N (resolve_device)
    precision: str = "float32"  # float32 | bfloat16 (autocast; MetaLearner)
    batched: bool | None = None  # auto | true | false (MetaLearner.batched)


@dataclass
class FederationConfig:
    """Federated meta-training (``fedmeta run``, ``flwr run``): fleet, rounds, local work.

    Devices ``[0, num_devices - num_held_out)`` train; the last ``num_held_out`` never do and
    only score the meta-model, every ``eval_every`` rounds and after the last. Each round
    samples ``max(floor(fraction_train * training devices), min_train_devices)`` of them.
    ``None`` (``"auto"`` in TOML) takes the algorithm's default (``fedmeta.federated``).
    The learner comes from ``algorithm``; ``meta.algorithm`` is central training's.
    ``publish_dir``: if set, the server publishes the meta-model there (checkpoint and ONNX
    export, ``fedmeta.edge.versions``) after every round it evaluates (round 0 included),
    for edge front-ends to pick up (docs/deployment.md); empty: nothing is published.
    """

    algorithm: str = "fedmeta-maml"
    num_devices: int = 20
    num_held_out: int = 4
    rounds: int = 60
    fraction_train: float = 0.5
    min_train_devices: int = 2
    meta_batch: int = 10
    local_steps: int | None = None
    local_lr: float | None = None
    server_optimizer: str = AUTO
    server_lr: float | None = None
    eval_every: int = 15
    eval_episodes: int = 25
    round_timeout: float = 3600.0
    discovery_timeout: float = 300.0
    min_good_replies: int = 1
    short_round: str = "retry"
    max_retries: int = 2
    aggregation: str = "mean"
    trim_fraction: float = 0.2
    norm_bound: float | None = None
    krum_malicious: int = 1
    krum_select: int | None = None
    filter_factor: float = 3.0
    publish_dir: str = ""

    @property
    def num_train(self) -> int:
        """How many devices train (partitions ``[0, num_train)``)."""
        return self.num_devices - self.num_held_out

    @property
    def train_per_round(self) -> int:
        """How many training devices each round samples."""
        return max(int(self.num_train * self.fraction_train), self.min_train_devices)


@dataclass
class FaultsConfig:
    """Simulated faulty devices (``docs/reliability.md``): the probability that a training
    device's reply, in a round, crashes, hangs ``hang_extra_s`` past
    ``federation.round_timeout``, is NaN/Inf, is malformed, or is Byzantine (``sign-flip``:
    ``-factor * update``, ``scale``: ``factor * update``); at most one per reply, drawn from
    ``(seed, round, device, attempt)``. ``byzantine_devices``: the share of the training
    devices (rounded half up, drawn from the seed) that reply Byzantine whenever sampled."""

    crash: float = 0.0
    hang: float = 0.0
    nan: float = 0.0
    malformed: float = 0.0
    byzantine: float = 0.0
    byzantine_mode: str = "sign-flip"
    byzantine_factor: float = 10.0
    byzantine_devices: float = 0.0
    hang_extra_s: float = 1.0


@dataclass
class SimulationConfig:
    """Resources of the Ray simulation: per device, and for the whole of Ray (0: all);
    ``dispatch``: how Flower's engine pumps messages to devices (``fedmeta.app.dispatch``:
    ``indexed`` scans the stored messages once a poll, ``flower`` once per node a poll).
    ``worker_queue``: Ray calls a worker holds at once, the next queued while it computes
    one (``fedmeta.app.worker_queue``; 1: Flower's pool, one at a time; runs with hanging
    devices use 1 whatever is set). ``worker_batch``: the most messages sent to a Ray
    worker in one call, fewer at a round's end (``fedmeta.app.ray_batches``; 1: Flower's
    actors, a call per message; runs with hanging devices use 1). ``ray_address``: join
    that running Ray cluster (``auto``, ``host:port`` or ``ray://host:port``;
    docs/scale.md) instead of starting a local Ray; ``ray_cpus`` then does not apply (the
    cluster's nodes have their own). ``pin_workers``: each Ray worker pinned to cores of its
    own (as many as ``num_cpus``, a whole number) while they are free
    (``fedmeta.app.pinning``; for a host the run has to itself)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_cpus: int = 0
    dispatch: str = "indexed"
    worker_queue: int = 2
    worker_batch: int = 8
    ray_address: str = ""
    pin_workers: bool = False


@dataclass
class PrivacyConfig:
    """Client-level differential privacy of meta-updates and secure aggregation
    (docs/privacy.md). Off by default: no clipping, no noise, plain aggregation.

    Each device's pseudo-gradient is clipped to L2 norm ``clip_norm`` (``fixed``) or to a
    norm that tracks the ``target_quantile`` of update norms (``adaptive``, Andrew et al.
    2021), on the server or on the ``device``; Gaussian noise of ``noise_multiplier`` times
    the clip norm is added to the mean by the server (``central``) or to each update by its
    device (``local``). The ``accountant`` reports epsilon at ``delta`` after every round; a
    ``target_epsilon`` > 0 ends the run before the round that would exceed it.

    ``sampling`` picks the training devices of a private round: ``poisson`` (each with
    probability ``q``, add/remove adjacency), ``fixed`` (exactly ``n``, replace-one
    adjacency, accounted at ``z / 2``) or ``auto`` (``poisson``; ``fixed`` under SecAgg+,
    which needs a minimum of devices). Noise is secret (``os.urandom``) unless
    ``insecure_reproducible_noise``, which seeds it from ``train.seed`` and marks the
    epsilon as no guarantee in every output.
    """

    clipping: str = "none"
    clip_on: str = "server"
    clip_norm: float = 1.0
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    noise: str = "none"
    noise_multiplier: float = 0.0
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: float = 0.0
    secure_aggregation: bool = False
    secagg_shares: int = 3
    secagg_threshold: int = 2
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 2 ** 22
    sampling: str = "auto"
    insecure_reproducible_noise: bool = False

    @property
    def enabled(self) -> bool:
        """Whether the run takes the private path at all."""
        return self.clipping != "none" or self.noise != "none" or self.secure_aggregation

    @property
    def noisy(self) -> bool:
        """Whether noise is added at all."""
        return self.noise != "none" and self.noise_multiplier > 0

    @property
    def scheme(self) -> str:
        """The sampling scheme of training devices, ``auto`` resolved."""
        if self.sampling != "auto":
            return self.sampling
        return "fixed" if self.secure_aggregation else "poisson"


@dataclass
class FleetConfig:
    """A heterogeneous edge fleet with round deadlines (``fedmeta.fleet``, docs/fleet.md).

    Off while ``tiers`` is empty. ``tiers``: ``"profile:share:spread[:availability], ..."``;
    ``deadline_s``: simulated seconds per round (0: none, only with ``policy="wait"``);
    ``policy``: ``partial`` (devices shrink their work to fit), ``drop`` (late replies are
    dropped) or ``wait`` (the round waits for the slowest); ``fallback``: what second-order
    MAML becomes where it does not fit memory; ``compression`` of updates (``topk`` keeps
    ``topk_fraction`` of the entries). ``trace_capacity``: FedScale's measured
    ``client_device_capacity`` pickle (per-device compute latency and bandwidth, replacing
    the tiers' rates; ``fedmeta.fleet.traces``). ``trace_behaviour``: availability windows on
    the simulated clock, replacing the tiers' availability: FedScale's
    ``client_behave_trace`` pickle, or (a path ending in ``.csv``) FLGo's ``pings.csv``
    (``fedmeta.fleet.flgo``). ``trace_network``: an Ookla Speedtest CSV or a folder of them
    (FLGo's network trace): per-device upload and download rates, over the tiers' and
    ``trace_capacity``'s.
    """

    tiers: str = ""
    profiles_file: str = ""
    deadline_s: float = 0.0
    policy: str = "partial"
    fallback: str = "fomaml"
    compression: str = "none"
    topk_fraction: float = 0.01
    trace_capacity: str = ""
    trace_behaviour: str = ""
    trace_network: str = ""


@dataclass
class Config:
    """A whole job's configuration, section by section."""

    task: TaskConfig = field(default_factory=TaskConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples as lists, ``None`` as ``"auto"``), as written to
        ``config.json``/TOML."""
        return {name: {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in _sections()}

    def to_flat(self) -> dict[str, Any]:
        """``{"section.field": value}``, the shape of a Flower run config."""
        return {f"{name}.{k}": v for name, fields in self.to_dict().items()
                for k, v in fields.items()}


def _plain(value: Any) -> Any:
    if value is None:
        return AUTO
    return list(value) if isinstance(value, tuple) else value


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore


OPTIONAL = {int | None: (int, "an integer"), float | None: (float, "a number"),
            bool | None: (bool, "true, false")}  # field types that also take "auto"


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """``value`` as type ``kind`` or a ``ConfigError`` naming ``name``."""
    if kind in OPTIONAL:  # None or "auto": the default the field's user picks
        if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
            return None
        inner, allowed = OPTIONAL[kind]
        try:
            return _coerce(name, value, inner)
        except ConfigError:
            raise ConfigError(name, value, f"{allowed} or \"{AUTO}\"") from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(name, value, "true or false")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(name, value, "an integer")
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                pass
        if isinstance(value, int):
            if not -2**63 <= value < 2**63:  # what TOML and Flower's ConfigRecord carry
                raise ConfigError(name, value, "an integer within 64 bits")
            return value
        raise ConfigError(name, value, "an integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond float's range
                raise ConfigError(name, value, "a number within float range") from None
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


# Upper bounds (docs/reliability.md): far above any useful run, below what would exhaust
# memory or run for ever. ``_check_resources`` then refuses what fits them but not this machine.
MAXIMA: dict[str, int | float] = {
    "task.k_shot": 10_000, "task.q_query": 10_000, "task.n_way": 1_000,
    "task.test_alphabets": 1_000, "task.device_classes": 100_000,
    "task.min_way": 1_000, "task.max_support": 100_000,
    "meta.inner_steps": 1_000, "meta.eval_steps": 1_000,
    "train.meta_batch": 10_000, "train.iterations": 10_000_000,
    "train.eval_episodes": 1_000_000, "train.seed": 2**32 - 1,
    "federation.num_devices": 1_000_000, "federation.rounds": 1_000_000,
    "federation.meta_batch": 10_000, "federation.local_steps": 1_000,
    "federation.eval_every": 1_000_000, "federation.eval_episodes": 100_000,
    "federation.max_retries": 100, "federation.round_timeout": 7 * 24 * 3600.0,
    "federation.krum_malicious": 10_000, "federation.krum_select": 10_000,
    "faults.hang_extra_s": 24 * 3600.0, "faults.byzantine_factor": 1e6,
    "simulation.num_cpus": 1_024, "simulation.num_gpus": 64, "simulation.ray_cpus": 4_096,
    "simulation.worker_queue": 64, "simulation.worker_batch": 1_024,
    "privacy.secagg_shares": 10_000, "fleet.deadline_s": 1e9,
    "federation.discovery_timeout": 7 * 24 * 3600.0, "task.min_device_images": 10_000_000,
}
MEMORY_SHARE = 0.5  # of this machine's memory, the most one episode's estimate may take
# Activation floats one sample keeps per forward pass (a rough upper estimate): the MLP's
# 1-40-40-1 with ReLUs; Conv4's 64 channels x (conv, norm, ReLU) over 28, 14, 7 and 3 pixels.
ACTIVATIONS = {"sinusoid": 4 * 40 + 2, "omniglot": 3 * 64 * (28**2 + 14**2 + 7**2 + 3**2),
               "hf-text": 80 * 2 * 7 * 256}  # hf-text: 80 steps, 2 layers, gates c h of 256
IMAGE_KINDS = ("omniglot", "hf", "fewshot")  # images through Conv4 (hf's fedmeta protocol:
# its episode is a whole device, whose size the config does not give; estimated as few-shot)


def _check(cfg: Config) -> None:
    """Cross-field and range checks; the first failure raises ``ConfigError``."""
    _check_maxima(cfg)
    t, m, tr = cfg.task, cfg.meta, cfg.train
    if tr.seed < 0:
        raise ConfigError("train.seed", tr.seed, f"an integer in [0, {MAXIMA['train.seed']}]")
    choices = {"task.kind": (t.kind, TASK_KINDS), "task.partition": (t.partition, PARTITIONS),
               "meta.algorithm": (m.algorithm, ALGORITHMS),
               "train.meta_optimizer": (tr.meta_optimizer, OPTIMIZERS)}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(name, value, f"one of {sorted(allowed)}")
    positive_ints = {"task.k_shot": t.k_shot, "task.q_query": t.q_query,
                     "task.n_way": t.n_way, "meta.inner_steps": m.inner_steps,
                     "meta.eval_steps": m.eval_steps, "train.meta_batch": tr.meta_batch,
                     "train.iterations": tr.iterations, "train.eval_episodes": tr.eval_episodes,
                     "task.device_classes": t.device_classes}
    for name, value in positive_ints.items():
        if value < 1:
            raise ConfigError(name, value, "an integer >= 1")
    if not 0.0 < t.device_width <= 1.0:
        raise ConfigError("task.device_width", t.device_width, "a number in (0, 1]")
    for name, value in {"meta.inner_lr": m.inner_lr, "train.meta_lr": tr.meta_lr,
                        "task.dirichlet_alpha": t.dirichlet_alpha}.items():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(name, value, "a finite number > 0")
    if t.partition == "sampled" and t.device_classes < t.n_way:
        raise ConfigError("task.device_classes", t.device_classes,
                          f"an integer >= task.n_way={t.n_way} (a device's episodes draw "
                          f"n_way of its characters)")
    _check_hf(t)
    _check_hf_text(t)
    _check_fewshot(t)
    if t.kind in ("omniglot", "hf", "fewshot") and t.n_way < 2:
        raise ConfigError("task.n_way", t.n_way, "an integer >= 2 for classification")
    if t.test_alphabets < 1:
        raise ConfigError("task.test_alphabets", t.test_alphabets, "an integer >= 1")
    _check_alphabet_names(t)
    for name, (low, high) in {"task.amplitude": t.amplitude, "task.phase": t.phase,
                              "task.x_range": t.x_range}.items():
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ConfigError(name, [low, high], "finite [low, high] with low <= high")
    if t.amplitude[0] < 0:
        raise ConfigError("task.amplitude", list(t.amplitude), "amplitudes >= 0")
    check_device_name(tr.device)
    if tr.precision not in PRECISIONS:
        raise ConfigError("train.precision", tr.precision, f"one of {list(PRECISIONS)}")
    _check_federation(cfg.federation)
    _check_few_shot(cfg)
    _check_reliability(cfg.federation, cfg.faults)
    _check_simulation(cfg.simulation)
    _check_privacy(cfg.privacy, cfg.federation)
    _check_fleet(cfg)
    _check_resources(cfg)


def _check_maxima(cfg: Config) -> None:
    """Every field of ``MAXIMA`` at most its bound (``None``, an algorithm default, passes)."""
    for name, high in MAXIMA.items():
        section, _, key = name.partition(".")
        value = getattr(getattr(cfg, section), key)
        if value is not None and value > high:
            shown = f"{high:,}" if isinstance(high, int) else f"{high:g}"
            raise ConfigError(name, value, f"at most {shown} (docs/reliability.md, Bounds)")


def memory_bytes() -> int | None:
    """This machine's physical memory, or ``None`` where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def episode_bytes(cfg: Config) -> int:
    """A rough estimate of the memory one episode's adaptation needs on a device: its
    samples (``n_way * (k_shot + q_query)`` images, or ``k_shot + q_query`` points; a
    Meta-Dataset episode: ``max_support + n_way * q_query`` images at most) times the
    activations each keeps, kept for every inner step and the outer one (MAML's graph)."""
    t = cfg.task
    images = t.kind in IMAGE_KINDS
    samples = (t.k_shot + t.q_query) * (t.n_way if images else 1)
    if t.kind == "fewshot" and t.episodes == "meta-dataset":
        samples = t.max_support + t.n_way * t.q_query
    per_sample = ACTIVATIONS["omniglot" if images else t.kind]
    if t.kind == "fewshot":
        per_sample = conv4_activations(IMAGE_SIZE.get(t.dataset, 84))
    return 4 * samples * per_sample * (cfg.meta.inner_steps + 1)


def conv4_activations(size: int) -> int:
    """Conv4's activation floats per image (as ``ACTIVATIONS["omniglot"]``) at ``size``."""
    sides = [size, size // 2, size // 4, size // 8]
    return 3 * 64 * sum(side * side for side in sides)


def _check_resources(cfg: Config) -> None:
    """Refuse a config whose single episode cannot fit this machine's memory."""
    total, need = memory_bytes(), episode_bytes(cfg)
    if total is None or need <= MEMORY_SHARE * total:
        return
    t, m = cfg.task, cfg.meta
    fields = ("task.n_way, " if t.kind in IMAGE_KINDS else "") + \
        "task.k_shot, task.q_query, meta.inner_steps"
    values = {"n_way": t.n_way, "k_shot": t.k_shot, "q_query": t.q_query,
              "inner_steps": m.inner_steps}
    if t.kind not in IMAGE_KINDS:
        del values["n_way"]
    raise ConfigError(fields, values,
                      f"an episode that fits this machine: one needs about "
                      f"{need / 2**30:,.1f} GiB of activations, more than "
                      f"{MEMORY_SHARE:.0%} of its {total / 2**30:,.1f} GiB of memory; "
                      f"lower them")


def _alphabet_names(value: str) -> tuple[str, ...]:
    """The alphabet names of a comma-separated field, in order, blanks dropped."""
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _check_alphabet_names(t: TaskConfig) -> None:
    test, excluded = _alphabet_names(t.test_alphabet_names), _alphabet_names(t.exclude_alphabets)
    for name, names in (("task.test_alphabet_names", test), ("task.exclude_alphabets", excluded)):
        if len(set(names)) != len(names):
            raise ConfigError(name, ",".join(names), "alphabet names, each once")
    if set(test) & set(excluded):
        raise ConfigError("task.exclude_alphabets", t.exclude_alphabets,
                          f"alphabets not among task.test_alphabet_names "
                          f"({', '.join(sorted(set(test) & set(excluded)))} is in both)")
    if (test or excluded) and t.kind != "omniglot":
        field = "task.test_alphabet_names" if test else "task.exclude_alphabets"
        raise ConfigError(field, t.test_alphabet_names if test else t.exclude_alphabets,
                          f"empty for task.kind={t.kind!r} (alphabets are Omniglot's)")


def _check_hf(t: TaskConfig) -> None:
    """The ``hf`` task's names; whether the columns exist is checked on the data."""
    if t.kind != "hf":
        return
    for name in ("dataset", "split", "image_column", "label_column", "partition_by"):
        if not getattr(t, name).strip():
            raise ConfigError(f"task.{name}", getattr(t, name), "a non-empty name")
    if t.image_column == t.label_column:
        raise ConfigError("task.label_column", t.label_column,
                          f"a column other than task.image_column={t.image_column!r}")
    if t.partition_by in (t.image_column, t.label_column):
        raise ConfigError("task.partition_by", t.partition_by,
                          "a natural id column other than the image and label columns, "
                          "\"dirichlet\" or \"pathological\"")
    if t.protocol not in HF_PROTOCOLS:
        raise ConfigError("task.protocol", t.protocol, f"one of {sorted(HF_PROTOCOLS)}")
    if not 0.0 < t.support_fraction < 1.0:
        raise ConfigError("task.support_fraction", t.support_fraction, "a number in (0, 1)")
    if t.min_device_images < 2:
        raise ConfigError("task.min_device_images", t.min_device_images,
                          "an integer >= 2 (a support and a query image)")
    if t.partition_by == "pathological" and t.device_classes < t.n_way:
        raise ConfigError("task.device_classes", t.device_classes,
                          f"an integer >= task.n_way={t.n_way} (a device's episodes draw "
                          f"n_way of its classes)")


def _check_fewshot(t: TaskConfig) -> None:
    """The ``fewshot`` task's names and episode bounds; whether the files are there and in
    the standard format is checked on the data (``fedmeta.tasks.benchmarks``)."""
    if t.kind in KIND_PARTITIONS and t.partition not in KIND_PARTITIONS[t.kind]:
        raise ConfigError("task.partition", t.partition,
                          f"one of {list(KIND_PARTITIONS[t.kind])} for kind {t.kind}")
    if t.episodes not in EPISODES:
        raise ConfigError("task.episodes", t.episodes, f"one of {list(EPISODES)}")
    if t.kind != "fewshot":
        if t.episodes != "fixed":
            raise ConfigError("task.episodes", t.episodes,
                              "\"fixed\" unless task.kind = \"fewshot\"")
        return
    if t.dataset not in BENCHMARKS:
        raise ConfigError("task.dataset", t.dataset,
                          f"one of {list(BENCHMARKS)} for kind fewshot")
    if not t.data_dir.strip():
        raise ConfigError("task.data_dir", t.data_dir,
                          f"the folder holding {t.dataset}'s files (docs/data.md)")
    if t.eval_split not in EVAL_SPLITS:
        raise ConfigError("task.eval_split", t.eval_split, f"one of {list(EVAL_SPLITS)}")
    if t.episodes == "meta-dataset":
        if not 2 <= t.min_way <= t.n_way:
            raise ConfigError("task.min_way", t.min_way,
                              f"an integer from 2 to task.n_way={t.n_way} (the most classes)")
        if t.max_support < t.n_way:
            raise ConfigError("task.max_support", t.max_support,
                              f"an integer >= task.n_way={t.n_way} (a shot per class)")


def _check_hf_text(t: TaskConfig) -> None:
    """The ``hf-text`` task: FedMeta protocol over a natural id column; whether the columns
    exist and hold strings is checked on the data (``fedmeta.tasks.hf_text``)."""
    if t.kind != "hf-text":
        return
    for name in ("dataset", "split", "text_column", "label_column", "partition_by"):
        if not getattr(t, name).strip():
            raise ConfigError(f"task.{name}", getattr(t, name), "a non-empty name")
    if t.label_column == t.text_column:
        raise ConfigError("task.label_column", t.label_column,
                          f"a column other than task.text_column={t.text_column!r}")
    if t.partition_by in ("dirichlet", "pathological", t.text_column, t.label_column):
        raise ConfigError("task.partition_by", t.partition_by,
                          "a natural id column (flwrlabs/shakespeare: \"character_id\") other "
                          "than the text and label columns")
    if t.protocol != "fedmeta":
        raise ConfigError("task.protocol", t.protocol,
                          "\"fedmeta\" for kind hf-text (each device is a task)")
    if not 0.0 < t.support_fraction < 1.0:
        raise ConfigError("task.support_fraction", t.support_fraction, "a number in (0, 1)")
    if t.min_device_images < 2:
        raise ConfigError("task.min_device_images", t.min_device_images,
                          "an integer >= 2 (a support and a query sample)")


def _check_federation(f: FederationConfig) -> None:
    if f.algorithm not in FEDERATED_ALGORITHMS:
        raise ConfigError("federation.algorithm", f.algorithm,
                          f"one of {sorted(FEDERATED_ALGORITHMS)}")
    if f.server_optimizer not in SERVER_OPTIMIZERS:
        raise ConfigError("federation.server_optimizer", f.server_optimizer,
                          f"one of {sorted(SERVER_OPTIMIZERS + (AUTO,))}")
    for name in ("num_devices", "rounds", "min_train_devices", "meta_batch", "local_steps",
                 "eval_every", "eval_episodes"):
        if getattr(f, name) < 1:
            raise ConfigError(f"federation.{name}", getattr(f, name), "an integer >= 1")
    if not 1 <= f.num_held_out < f.num_devices:
        raise ConfigError("federation.num_held_out", f.num_held_out,
                          f"an integer in [1, federation.num_devices={f.num_devices}) "
                          f"(at least one device trains and one is held out)")
    if not 0.0 <= f.fraction_train <= 1.0:
        raise ConfigError("federation.fraction_train", f.fraction_train, "a number in [0, 1]")
    if f.min_train_devices > f.num_train:
        raise ConfigError("federation.min_train_devices", f.min_train_devices,
                          f"at most the {f.num_train} training devices "
                          f"(num_devices - num_held_out)")
    for name in ("local_lr", "server_lr"):
        value = getattr(f, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"federation.{name}", value, "a finite number > 0")


def _check_few_shot(cfg: Config) -> None:
    """Metric and model-based learners (``few_shot_only``) need N-way K-shot classification
    episodes, whose support set holds every class: Omniglot or ``hf`` few-shot."""
    t = cfg.task
    if t.kind in ("omniglot", "fewshot") or (t.kind == "hf" and t.protocol == "few-shot"):
        return
    task = f"task.kind={t.kind!r}" + (f", task.protocol={t.protocol!r}"
                                      if t.kind in ("hf", "hf-text") else "")
    learners = {"meta.algorithm": {a: a for a in ALGORITHMS},
                "federation.algorithm": {f: d.learner for f, d in FEDERATED_ALGORITHMS.items()}}
    for name, algorithm in (("meta.algorithm", cfg.meta.algorithm),
                            ("federation.algorithm", cfg.federation.algorithm)):
        learner = learners[name][algorithm]
        if ALGORITHMS[learner].few_shot_only:
            usable = sorted(a for a, lr in learners[name].items()
                            if not ALGORITHMS[lr].few_shot_only)
            raise ConfigError(name, algorithm,
                              f"one of {usable} for {task} ({learner} classifies N-way "
                              f"K-shot episodes: task.kind=\"omniglot\", \"fewshot\", or \"hf\" "
                              f"with task.protocol=\"few-shot\")")


def _check_reliability(f: FederationConfig, faults: FaultsConfig) -> None:
    """Round timeout, short rounds, robust aggregation and fault injection."""
    choices = {"federation.short_round": (f.short_round, SHORT_ROUNDS),
               "federation.aggregation": (f.aggregation, AGGREGATIONS),
               "faults.byzantine_mode": (faults.byzantine_mode, BYZANTINE_MODES)}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(name, value, f"one of {list(allowed)}")
    if not (math.isfinite(f.round_timeout) and f.round_timeout > 0):
        raise ConfigError("federation.round_timeout", f.round_timeout,
                          "a finite number of seconds > 0")
    if not (math.isfinite(f.discovery_timeout) and f.discovery_timeout > 0):
        raise ConfigError("federation.discovery_timeout", f.discovery_timeout,
                          "a finite number of seconds > 0 (how long the server waits for "
                          "every device to say which partition it holds)")
    if not 1 <= f.min_good_replies <= f.train_per_round:
        raise ConfigError("federation.min_good_replies", f.min_good_replies,
                          f"an integer in [1, {f.train_per_round}] (the devices sampled "
                          f"per round)")
    if f.max_retries < 0:
        raise ConfigError("federation.max_retries", f.max_retries, "an integer >= 0")
    if not 0.0 <= f.trim_fraction < 0.5:
        raise ConfigError("federation.trim_fraction", f.trim_fraction, "a number in [0, 0.5)")
    if f.norm_bound is not None and not (math.isfinite(f.norm_bound) and f.norm_bound > 0):
        raise ConfigError("federation.norm_bound", f.norm_bound,
                          f'a finite number > 0, or "{AUTO}" (the median norm of the round)')
    if not (math.isfinite(f.filter_factor) and f.filter_factor >= 1):
        raise ConfigError("federation.filter_factor", f.filter_factor,
                          "a finite number >= 1 (times the round's median update norm)")
    krum = f.aggregation == "multi-krum"  # sizes are checked against the round's if used
    if f.krum_malicious < 0 or (krum and f.krum_malicious >= f.train_per_round):
        raise ConfigError("federation.krum_malicious", f.krum_malicious,
                          f"an integer in [0, {f.train_per_round}) (devices sampled per round)")
    if f.krum_select is not None and (f.krum_select < 1 or (
            krum and f.krum_select > f.train_per_round)):
        raise ConfigError("federation.krum_select", f.krum_select,
                          f'an integer in [1, {f.train_per_round}], or "{AUTO}" (the replies '
                          f"minus federation.krum_malicious)")
    for kind in FAULT_KINDS:
        p = getattr(faults, kind)
        if not 0.0 <= p <= 1.0:  # False for NaN
            raise ConfigError(f"faults.{kind}", p, "a probability in [0, 1]")
    total = sum(getattr(faults, kind) for kind in FAULT_KINDS)
    if total > 1.0 + 1e-9:
        raise ConfigError("faults", {k: getattr(faults, k) for k in FAULT_KINDS},
                          f"probabilities summing to at most 1 (a reply fails one way at "
                          f"most); they sum to {total:g}")
    if not 0.0 <= faults.byzantine_devices < 1.0:  # False for NaN
        raise ConfigError("faults.byzantine_devices", faults.byzantine_devices,
                          "a share of the training devices in [0, 1)")
    if not (math.isfinite(faults.byzantine_factor) and faults.byzantine_factor > 0):
        raise ConfigError("faults.byzantine_factor", faults.byzantine_factor,
                          "a finite number > 0")
    if not (math.isfinite(faults.hang_extra_s) and faults.hang_extra_s >= 0):
        raise ConfigError("faults.hang_extra_s", faults.hang_extra_s,
                          "a finite number of seconds >= 0")


def _check_simulation(s: SimulationConfig) -> None:
    if not (math.isfinite(s.num_cpus) and s.num_cpus > 0):
        raise ConfigError("simulation.num_cpus", s.num_cpus, "a number > 0 (CPUs per device)")
    if not (math.isfinite(s.num_gpus) and s.num_gpus >= 0):
        raise ConfigError("simulation.num_gpus", s.num_gpus, "a number >= 0 (GPUs per device)")
    if s.ray_cpus < 0:
        raise ConfigError("simulation.ray_cpus", s.ray_cpus,
                          "an integer >= 0 (0: every CPU of this machine)")
    if s.dispatch not in DISPATCHES:
        raise ConfigError("simulation.dispatch", s.dispatch, f"one of {list(DISPATCHES)}")
    if s.worker_queue < 1:
        raise ConfigError("simulation.worker_queue", s.worker_queue,
                          "an integer >= 1 (messages a Ray worker holds at once)")
    if s.worker_batch < 1:
        raise ConfigError("simulation.worker_batch", s.worker_batch,
                          "an integer >= 1 (messages sent to a Ray worker in one call)")
    if s.pin_workers and not (s.num_cpus.is_integer() and s.num_cpus >= 1):
        raise ConfigError("simulation.pin_workers", s.pin_workers,
                          f"false when simulation.num_cpus ({s.num_cpus:g}) is not a whole "
                          f"number of cores")
    if s.ray_address and not (s.ray_address == "auto" or _host_port(s.ray_address)):
        raise ConfigError("simulation.ray_address", s.ray_address,
                          "empty (start a local Ray), auto, host:port or ray://host:port "
                          "(port 1-65535)")


def _host_port(address: str) -> bool:
    """``host:port`` or ``ray://host:port`` with a host and a port in 1-65535."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    return (bool(sep) and bool(host) and not any(c.isspace() or c in "/:" for c in host)
            and port.isdigit() and 1 <= int(port) <= 65_535)


CLIPPINGS, CLIP_SIDES, NOISES, ACCOUNTANTS = (("none", "fixed", "adaptive"),
                                              ("server", "device"),
                                              ("none", "central", "local"), ("rdp", "prv"))
SAMPLINGS = ("auto", "poisson", "fixed")
COUNT_STD_SHARE = 20  # adaptive clipping: the clipped count's std is devices per round / 20


def _check_privacy(p: PrivacyConfig, f: FederationConfig) -> None:
    choices = {"clipping": (p.clipping, CLIPPINGS), "clip_on": (p.clip_on, CLIP_SIDES),
               "noise": (p.noise, NOISES), "accountant": (p.accountant, ACCOUNTANTS),
               "sampling": (p.sampling, SAMPLINGS)}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"privacy.{name}", value, f"one of {list(allowed)}")
    if not (math.isfinite(p.noise_multiplier) and p.noise_multiplier >= 0):
        raise ConfigError("privacy.noise_multiplier", p.noise_multiplier, "a number >= 0")
    for name in ("clip_norm", "clip_lr", "secagg_clipping_range"):
        value = getattr(p, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"privacy.{name}", value, "a finite number > 0")
    if not 0.0 < p.delta < 1.0:
        raise ConfigError("privacy.delta", p.delta, "a number in (0, 1), e.g. 1e-5")
    if not 0.0 <= p.target_quantile <= 1.0:
        raise ConfigError("privacy.target_quantile", p.target_quantile, "a number in [0, 1]")
    if not (math.isfinite(p.target_epsilon) and p.target_epsilon >= 0):
        raise ConfigError("privacy.target_epsilon", p.target_epsilon,
                          "a finite number > 0, or 0 for no target")
    noisy = p.noise != "none" and p.noise_multiplier > 0
    if p.target_epsilon > 0 and not noisy:
        raise ConfigError("privacy.target_epsilon", p.target_epsilon,
                          "0 (no target) when no noise is added: without noise "
                          "(privacy.noise and privacy.noise_multiplier > 0) epsilon is "
                          "infinite")
    if p.noise == "none" and p.noise_multiplier > 0:
        raise ConfigError("privacy.noise", p.noise,
                          "\"central\" or \"local\" when privacy.noise_multiplier > 0")
    if noisy and p.clipping == "none":
        raise ConfigError("privacy.clipping", p.clipping,
                          "\"fixed\" or \"adaptive\" when noise is added: the noise is "
                          "calibrated to the clip norm")
    if p.clipping == "adaptive" and (p.clip_on == "device" or p.noise == "local"
                                     or p.secure_aggregation):
        raise ConfigError("privacy.clipping", p.clipping,
                          "\"fixed\" with device-side clipping, local noise or secure "
                          "aggregation (adaptive clipping needs every update's norm on "
                          "the server)")
    if p.noise == "local" and p.clip_on != "device":
        raise ConfigError("privacy.clip_on", p.clip_on,
                          "\"device\" with local noise (a device clips what it noises)")
    if p.secure_aggregation and p.clipping != "none" and p.clip_on != "device":
        raise ConfigError("privacy.clip_on", p.clip_on,
                          "\"device\" with secure aggregation (the server never sees a "
                          "single update, so it cannot clip one)")
    _check_private_accounting(p, f)
    if p.secure_aggregation and f.aggregation != "mean":
        raise ConfigError("federation.aggregation", f.aggregation,
                          "\"mean\" with privacy.secure_aggregation = true (SecAgg+ "
                          "reveals only the sum of the updates, on which no robust rule "
                          "can run)")
    if p.secure_aggregation and f.train_per_round < 2:
        raise ConfigError("federation.min_train_devices", f.min_train_devices,
                          "at least 2 devices per round under secure aggregation")
    if p.secagg_shares < 3:  # checked on or off, so a config switched on later is sound
        raise ConfigError("privacy.secagg_shares", p.secagg_shares,
                          "an integer >= 3 (SecAgg+ neighbours, the device included)")
    if not 2 <= p.secagg_quantization_range < 2 ** 32:
        raise ConfigError("privacy.secagg_quantization_range",
                          p.secagg_quantization_range, "an integer in [2, 2**32)")
    n = f.train_per_round if p.secure_aggregation else p.secagg_threshold
    if not 2 <= p.secagg_threshold < p.secagg_shares or p.secagg_threshold > n:
        raise ConfigError("privacy.secagg_threshold", p.secagg_threshold,
                          f"an integer in [2, secagg_shares={p.secagg_shares})"
                          + (f" and at most the {n} devices per round"
                             if p.secure_aggregation else ""))


def _check_private_accounting(p: PrivacyConfig, f: FederationConfig) -> None:
    """Combinations whose sensitivity or accounting the code does not calibrate."""
    if p.sampling == "poisson" and not p.enabled:
        raise ConfigError("privacy.sampling", p.sampling,
                          "\"auto\" or \"fixed\" for a run without privacy (plain runs "
                          "sample a fixed number of devices; Poisson sampling is for private "
                          "runs: turn on privacy.clipping/noise)")
    if p.insecure_reproducible_noise and not (p.noisy or p.secure_aggregation):
        raise ConfigError("privacy.insecure_reproducible_noise", True,
                          "false when neither noise nor secure aggregation is on (it only "
                          "seeds DP noise and SecAgg+'s rounding and shuffling)")
    if p.noise == "central" and f.aggregation != "mean":
        raise ConfigError("federation.aggregation", f.aggregation,
                          "\"mean\" with privacy.noise=\"central\": the noise is calibrated to "
                          "how far one device moves the mean; a robust rule (median, trimmed "
                          "mean, krum, norm filters) can move further (e.g. the median by "
                          "up to the spread of the others' updates) and is not accounted "
                          "(local noise works with any rule)")
    if p.scheme == "poisson" and p.secure_aggregation:
        raise ConfigError("privacy.sampling", p.sampling,
                          "\"fixed\" (or \"auto\") with secure aggregation: SecAgg+ needs a "
                          "minimum number of devices, which Poisson sampling cannot promise")
    if p.scheme == "poisson" and p.noise == "central" and f.min_good_replies > 1:
        raise ConfigError("federation.min_good_replies", f.min_good_replies,
                          "1 with privacy.sampling=\"poisson\" and central noise: every "
                          "round releases its noised sum however many devices took part "
                          "(retrying a round with few replies would reveal their number "
                          "and resample devices outside the accounting)")
    if p.clipping == "adaptive" and p.noise == "central" and p.noise_multiplier > 0:
        count_std = f.train_per_round / COUNT_STD_SHARE
        if p.noise_multiplier >= 2 * count_std:
            raise ConfigError(
                "privacy.noise_multiplier", p.noise_multiplier,
                f"a number below 2 * the adaptive clipped count's std = 2 * "
                f"{f.train_per_round} devices per round / {COUNT_STD_SHARE} = "
                f"{2 * count_std:g} (the count's release takes part of the budget); lower "
                f"privacy.noise_multiplier, sample more devices per round "
                f"(federation.fraction_train, federation.min_train_devices) or use "
                f"privacy.clipping=\"fixed\"")


def _check_fleet(cfg: Config) -> None:
    f = cfg.fleet
    choices = {"fleet.policy": (f.policy, fleet_module.POLICIES),
               "fleet.fallback": (f.fallback, fleet_module.FALLBACKS),
               "fleet.compression": (f.compression, fleet_module.COMPRESSIONS)}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(name, value, f"one of {sorted(allowed)}")
    if not (math.isfinite(f.deadline_s) and f.deadline_s >= 0):
        raise ConfigError("fleet.deadline_s", f.deadline_s, "a number >= 0 (simulated s)")
    if not 0.0 < f.topk_fraction <= 1.0:
        raise ConfigError("fleet.topk_fraction", f.topk_fraction, "a number in (0, 1]")
    if not fleet_module.enabled(cfg):
        if f.compression != "none" or f.deadline_s or f.trace_capacity or f.trace_behaviour \
                or f.trace_network:
            raise ConfigError("fleet.tiers", f.tiers, "tiers of devices, e.g. "
                              "\"raspberry-pi-4:0.5:0.2, phone:0.5:0.3\", for a deadline, "
                              "compression or device traces (the tiers give the memory and "
                              "what the traces do not measure)")
        return
    fleet_module.check(cfg)
    if f.policy != "wait" and f.deadline_s == 0:
        raise ConfigError("fleet.deadline_s", f.deadline_s,
                          f"a deadline > 0 for policy {f.policy!r} (or policy \"wait\")")


def _device_choices() -> list[str]:
    """The device names this process can use."""
    import torch  # here, not at import: config stays light for the CLI's start-up

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda = ["cuda"] + [f"cuda:{i}" for i in range(count)] if count else []
    return [AUTO, "cpu", *cuda]


def check_device_name(value: str, field_name: str = "train.device") -> None:
    """Raise ``ConfigError`` unless ``value`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (the form only: whether it exists is ``resolve_device``'s check, where it computes)."""
    kind, colon, index = value.partition(":")
    if value in (AUTO, "cpu", "cuda") or (kind == "cuda" and colon and index.isdigit()):
        return
    raise ConfigError(field_name, value, "auto, cpu, cuda or cuda:N")


def resolve_device(value: str, field_name: str = "train.device") -> torch.device:
    """The ``torch.device`` a ``train.device`` setting names in this process: ``auto`` is
    the first visible GPU if there is one (under Ray, the GPU Ray gave the worker), else the
    CPU. An unknown or absent device is a ``ConfigError`` naming those available."""
    import torch

    check_device_name(value, field_name)
    choices = _device_choices()
    if value == AUTO:
        return torch.device("cuda:0" if "cuda" in choices else "cpu")
    if value not in choices:
        raise ConfigError(field_name, value, f"a device of this machine: one of {choices}"
                          + ("" if "cuda" in choices else " (no CUDA device visible)"))
    return torch.device("cuda:0" if value == "cuda" else value)


def _resolve_auto(f: FederationConfig) -> FederationConfig:
    """``f`` with every ``None``/``"auto"`` field set to its algorithm's default."""
    if f.algorithm not in FEDERATED_ALGORITHMS:
        return f  # _check_federation names the bad algorithm
    defaults = FEDERATED_ALGORITHMS[f.algorithm]
    auto = {name: getattr(defaults, name)
            for name in ("local_steps", "local_lr", "server_optimizer", "server_lr")
            if getattr(f, name) in (None, AUTO)}
    return dataclasses.replace(f, **auto)


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
    cfg.federation = _resolve_auto(cfg.federation)
    _check(cfg)
    return cfg


def from_flat(flat: Mapping[str, Any]) -> Config:
    """A validated ``Config`` from ``{"section.field": value}`` (a Flower run config)."""
    data: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if not dot or not section or not name:
            raise ConfigError(key, value, "a key of the form section.field, e.g. meta.inner_lr")
        data.setdefault(section, {})[name] = value
    return from_dict(data)


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
