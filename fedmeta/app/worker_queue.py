"""Ray workers that hold their next message while they compute the current one.

Flower's Ray backend (``RayBackend`` over a ``BasicActorPool``) gives a worker (a Ray actor)
one message at a time: the next one is submitted only after the reply has come back to the
driver, so between two messages the worker waits for a round trip through the driver (the
result fetched and deserialised, the reply handed on, the next message taken from the queue,
serialised and submitted). Profiled on a 2-core host with 100 small devices a round, that
wait was 5-7% of a worker's time (docs/scale.md).

``queued_workers(depth)`` gives each actor ``depth`` slots in Flower's pool, and the engine
one worker thread per slot: while an actor computes one message, the next is already queued
on it, and Ray runs an actor's messages one after another. Each message still runs alone in
its actor with its own node's context, so what a device computes is unchanged. A message
queued behind a slow one waits for it, where Flower's pool would hand it to the first actor
that frees up; ``simulate`` therefore keeps one slot when faults make devices hang.

Flower's engine runs one thread per slot (``backend.num_workers`` loops, each taking a
message and waiting for its reply) in a ``ThreadPoolExecutor()`` of Python's default size,
``min(32, cores + 4)`` of the driver's host: on 2 cores, 6 threads, and on a Ray cluster
never more than 32, so most actors of a large cluster (or slots of a queue) would sit idle.
Under ``queued_workers`` the engine's executor has a thread for every slot.

At any depth, the function that gives a worker the ClientApp travels by reference
(``client_app.load_app``) when the app is fedmeta's: Flower's own is a closure, which Ray
pickles by value (the ClientApp with it) with every message, 0.4 ms of each message's
round trip on a 2-core AMD EPYC host.

``queued_workers(depth, batch)`` with ``batch`` > 1 sends up to ``batch`` messages in one
Ray call instead (``fedmeta.app.ray_batches``), ``depth`` calls per actor at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend.backend import Backend
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

from ..config import Config
from . import client_app
from .pinning import pin_worker
from .ray_batches import BatchedBackend


class QueuedBackend(Backend):
    """Flower's ``RayBackend`` with ``depth`` slots per actor (1: as Flower's pool) and the
    ClientApp by reference (``by_reference``)."""

    def __init__(self, backend: RayBackend, depth: int) -> None:
        self.backend, self.depth = backend, depth
        self.actors: list[Any] = []

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self.backend.build(by_reference(app_fn))
        pool = self.backend.pool
        self.actors = list(pool.pool)  # all idle right after the build
        pool.pool = self.actors * self.depth  # interleaved: a, b, a, b
        pool.num_actors = len(pool.pool)

    @property
    def num_workers(self) -> int:
        return self.backend.num_workers

    def is_worker_idle(self) -> bool:
        return self.backend.is_worker_idle()

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        return self.backend.process_message(message, context)

    def terminate(self) -> None:
        pool = self.backend.pool
        if pool is not None:  # each actor once (Flower's terminate asks each entry to exit)
            pool.pool, pool.num_actors = list(self.actors), len(self.actors)
        self.backend.terminate()


def by_reference(app_fn: Callable[[], ClientApp]) -> Callable[[], ClientApp]:
    """``client_app.load_app`` if ``app_fn`` gives fedmeta's device app, else ``app_fn``."""
    return client_app.load_app if app_fn() is client_app.app else app_fn


def worker_queue(cfg: Config) -> int:
    """The run's messages per Ray worker: ``simulation.worker_queue``, or 1 when devices may
    hang (a message queued behind a hanging one would miss the round's timeout with it)."""
    return 1 if cfg.faults.hang > 0 else cfg.simulation.worker_queue


def pinned_cores(cfg: Config) -> int:
    """Cores each Ray worker is pinned to: its CPUs if ``simulation.pin_workers``, else 0
    (not pinned)."""
    return int(cfg.simulation.num_cpus) if cfg.simulation.pin_workers else 0


def worker_batch(cfg: Config) -> int:
    """The run's messages per Ray call: ``simulation.worker_batch``, or 1 when devices may
    hang (the messages of a call would wait for a hanging one)."""
    return 1 if cfg.faults.hang > 0 else cfg.simulation.worker_batch


@contextmanager
def queued_workers(depth: int, batch: int = 1, pin: int = 0) -> Iterator[None]:
    """Run the simulation engine started inside with ``depth`` calls per Ray worker at once
    (1: one, as Flower's pool), each of up to ``batch`` messages (1: Flower's actors, one
    message a call; more: ``fedmeta.app.ray_batches``), and a thread for each message that
    can be in flight; with ``pin`` > 0, each Ray worker pinned to ``pin`` cores of its own
    (``fedmeta.app.pinning``). Another backend than Flower's Ray one is left as it is, but
    for the threads."""
    if depth < 1 or batch < 1:
        raise ValueError(f"depth {depth}, batch {batch}: each at least 1")
    run_api, executor = vce_api.run_api, vce_api.ThreadPoolExecutor

    def running(app_fn: Callable[[], ClientApp], backend_fn: Callable[[], Backend],
                *args: object, **kwargs: object) -> None:
        built: list[Backend] = []

        def queued() -> Backend:
            backend = backend_fn()
            if type(backend) is RayBackend:
                if pin:  # read when the backend builds its actors
                    backend.actor_kwargs["on_actor_init_fn"] = partial(pin_worker, pin)
                backend = (BatchedBackend(backend, depth, batch, by_reference) if batch > 1
                           else QueuedBackend(backend, depth))
            built.append(backend)
            return built[-1]

        def threads(max_workers: int | None = None, **options: object) -> ThreadPoolExecutor:
            """The engine's executor: a thread for each of the backend's slots."""
            if max_workers is None and built:
                max_workers = max(built[-1].num_workers, 1)
            return executor(max_workers, **options)

        vce_api.ThreadPoolExecutor = threads
        try:
            run_api(app_fn, queued, *args, **kwargs)
        finally:
            vce_api.ThreadPoolExecutor = executor

    vce_api.run_api = running
    try:
        yield
    finally:
        vce_api.run_api = run_api
