"""Several messages per Ray call: fedmeta's Ray backend for Flower's simulation engine.

Flower's ``RayBackend`` makes one Ray actor call per message. On a 2-core AMD EPYC host a
call costs about 1.3 ms of CPU in the driver and as much in the worker whatever the message
holds (Ray's task submission, scheduling and reply; a message of 7 KB was measured), which
is most of what a small device's round trip costs beyond its learning (docs/scale.md). In a
call of 8 messages each costs 0.2 ms on each side.

``BatchedBackend`` keeps Flower's engine, its Ray and its resources (Flower's ``RayBackend``
starts Ray and validates ``client_resources`` as before), and replaces the actor pool: the
same number of actors, of the class ``BatchedAppActor``, each taking up to ``batch``
messages in a call and running them one after another, each exactly as Flower's
``ClientAppActor.run`` runs one (the same ClientApp, message, context and errors), and
``depth`` calls at once. The engine's worker threads (one per slot: ``actors x depth x
batch``) hand their messages to a queue; one thread takes them from it as actors free up,
in calls of ``min(batch, max(1, waiting // slots))`` messages (slots: ``actors x depth``):
no call takes more than its slot's share of what waits, so a round's last messages go one a
call and the actors finish together, as in Flower's pool. (``ceil(waiting / actors)``
lengthened a round of 10 messages an actor by a fifth in a model of the queue,
benchmarks/results/ray_batches.md.) A message's failure fails that message alone, as it
would alone: the engine turns it into Flower's error reply.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import ray
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
from flwr.common.constant import PARTITION_ID_KEY
from flwr.server.superlink.fleet.vce.backend.backend import Backend
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from flwr.simulation.ray_transport.ray_actor import BasicActorPool, VirtualClientEngineActor

AppFn = Callable[[], ClientApp]
Failure = tuple[bool, str, str]  # (the app failed to load, the error's text, its traceback)
Outcome = tuple[Message | None, Context | None, Failure | None]


class RemoteTraceback(Exception):
    """The traceback of an error raised in a Ray worker, as text (the cause of the
    ``ClientAppException`` the engine logs)."""


def run_jobs(actor: VirtualClientEngineActor, client_app_fn: AppFn,
             jobs: list[tuple[Message, str, Context]]) -> list[Outcome]:
    """Each job (message, partition id, context) as Flower's ``actor.run`` runs it, in
    order: (reply, context, None), or (None, None, what failed) where ``run`` would raise."""
    outcomes: list[Outcome] = []
    for message, cid, context in jobs:
        try:
            _, reply, context = actor.run(client_app_fn, message, cid, context)
            outcomes.append((reply, context, None))
        except Exception as ex:  # noqa: BLE001 - one message's failure, reported with it
            wrapped = isinstance(ex, ClientAppException)  # run's wrapper of the app's error
            cause = ex.__cause__ if wrapped and ex.__cause__ is not None else ex
            outcomes.append((None, None, (isinstance(ex, LoadClientAppError),
                                          str(cause) if wrapped else str(ex),
                                          "".join(traceback.format_exception(cause)))))
    return outcomes


@ray.remote
class BatchedAppActor(VirtualClientEngineActor):
    """Flower's ``ClientAppActor`` that also runs several messages in one call."""

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        super().__init__()
        if on_actor_init_fn:
            on_actor_init_fn()

    def run_batch(self, client_app_fn: AppFn,
                  jobs: list[tuple[Message, str, Context]]) -> list[Outcome]:
        """``run_jobs`` in this worker."""
        return run_jobs(self, client_app_fn, jobs)


def raised(failure: Failure) -> Exception:
    """The exception Flower's actor would have raised for ``failure``, its cause the
    worker's traceback."""
    load_failed, text, trace = failure
    error = LoadClientAppError(text) if load_failed else ClientAppException(text)
    error.__cause__ = RemoteTraceback(trace)
    return error


def call_size(waiting: int, slots: int, batch: int) -> int:
    """Messages in the next call: at most ``batch`` and the waiting messages' share per actor
    slot (rounded down), at least one."""
    return min(batch, max(1, waiting // slots))


@dataclass
class Job:
    """A message waiting for its reply."""

    message: Message
    cid: str
    context: Context
    reply: Future[tuple[Message, Context]] = field(default_factory=Future)


class BatchedBackend(Backend):
    """Flower's simulation backend on Ray with ``batch`` messages per actor call and
    ``depth`` calls per actor at once; ``backend`` (Flower's) has started Ray. The workers
    load the ClientApp with ``loader(app_fn)`` (``app_fn``: the engine's)."""

    def __init__(self, backend: RayBackend, depth: int, batch: int,
                 loader: Callable[[AppFn], AppFn] = lambda app_fn: app_fn) -> None:
        if depth < 1 or batch < 1:
            raise ValueError(f"depth {depth}, batch {batch}: each at least 1")
        self.backend, self.depth, self.batch, self.loader = backend, depth, batch, loader
        self.actors: list[Any] = []
        self.app_fn: AppFn | None = None
        self.free: deque[Any] = deque()  # actor slots without a call
        self.waiting: deque[Job] = deque()
        self.changed = threading.Condition()
        self.stopped = False
        self.submitter: threading.Thread | None = None

    def build(self, app_fn: AppFn) -> None:
        pool = BasicActorPool(actor_type=BatchedAppActor,  # type: ignore[arg-type]
                              client_resources=self.backend.client_resources,
                              actor_kwargs=self.backend.actor_kwargs)
        pool.add_actors_to_pool(pool.actors_capacity)
        self.backend.pool, self.backend.app_fn = pool, app_fn
        self.app_fn, self.actors = self.loader(app_fn), list(pool.pool)
        self.free.extend(self.actors * self.depth)  # interleaved: a, b, a, b
        self.submitter = threading.Thread(target=self._submit, name="fedmeta-ray-batches",
                                          daemon=True)
        self.submitter.start()

    @property
    def num_workers(self) -> int:
        """The engine's worker threads: one per message a call of every slot can take."""
        return len(self.actors) * self.depth * self.batch

    def is_worker_idle(self) -> bool:
        with self.changed:
            return bool(self.free)

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self.submitter is None:
            raise ValueError("call the backend's build() before processing messages")
        job = Job(message, str(context.node_config[PARTITION_ID_KEY]), context)
        with self.changed:
            if self.stopped:
                raise RuntimeError("the simulation backend has been terminated")
            self.waiting.append(job)
            self.changed.notify_all()
        return job.reply.result()

    def _submit(self) -> None:
        """Send waiting messages to free actor slots until the backend terminates."""
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.stopped or (self.waiting and self.free))
                if self.stopped:
                    return
                actor = self.free.popleft()
                size = call_size(len(self.waiting), len(self.actors) * self.depth,
                                 self.batch)
                jobs = [self.waiting.popleft() for _ in range(size)]
            try:
                call = actor.run_batch.remote(self.app_fn, [(job.message, job.cid, job.context)
                                                            for job in jobs])
                call.future().add_done_callback(lambda done, a=actor, j=jobs:
                                                self._replied(a, j, done))
            except Exception as ex:  # noqa: BLE001 - the call could not be made: its messages fail
                self._replied(actor, jobs, _failed(ex))

    def _replied(self, actor: Any, jobs: list[Job], done: Future[list[Outcome]]) -> None:
        """Hand each job its reply or error, and the actor slot back (whatever happens: a
        job left without either would hang its engine thread)."""
        try:
            outcomes = done.result()
            if len(outcomes) != len(jobs):
                raise RuntimeError(f"a Ray worker answered {len(outcomes)} messages of a "
                                   f"call of {len(jobs)}")
            for job, (reply, context, failure) in zip(jobs, outcomes, strict=True):
                if failure is None:
                    job.reply.set_result((reply, context))  # type: ignore[arg-type]
                else:
                    job.reply.set_exception(raised(failure))
        except Exception as ex:  # noqa: BLE001 - the call failed (a Ray error): its jobs with it
            for job in jobs:
                if not job.reply.done():
                    job.reply.set_exception(ex)
        finally:
            with self.changed:
                self.free.append(actor)
                self.changed.notify_all()

    def terminate(self) -> None:
        with self.changed:
            self.stopped = True
            left, self.waiting = list(self.waiting), deque()
            self.changed.notify_all()
        for job in left:
            job.reply.set_exception(RuntimeError("the simulation backend has been terminated"))
        if self.submitter is not None:
            self.submitter.join()
        pool = self.backend.pool
        if pool is not None:  # each actor asked to exit once
            pool.pool, pool.num_actors = list(self.actors), len(self.actors)
        self.backend.terminate()


def _failed(ex: Exception) -> Future[list[Outcome]]:
    """A finished future that raises ``ex``."""
    done: Future[list[Outcome]] = Future()
    done.set_exception(ex)
    return done
