"""Ray workers that hold their next message (``fedmeta.app.worker_queue``): each actor gets
``depth`` slots in Flower's pool and the engine one worker thread per slot, each actor is
asked to exit once, Flower's pool keeps its actors at depth 1 and is untouched outside the
context, fedmeta's ClientApp travels to the workers by reference, and devices that may hang
keep one slot. That a queued run computes what Flower's pool does,
byte for byte, is checked end to end in tests/test_federated_run.py (one Ray worker with
two slots against two workers with one)."""

from __future__ import annotations

import inspect
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from flwr.clientapp import ClientApp
from flwr.server.superlink.fleet.vce import vce_api
from ray import cloudpickle

from fedmeta.app import client_app, worker_queue
from fedmeta.app.ray_batches import BatchedBackend
from fedmeta.app.worker_queue import QueuedBackend, queued_workers
from fedmeta.config import Config, FaultsConfig, SimulationConfig, from_flat
from fedmeta.errors import ConfigError


class _Pool:
    """The part of Flower's ``BasicActorPool`` the backend touches."""

    def __init__(self, actors: list[str]) -> None:
        self.pool, self.num_actors = list(actors), len(actors)
        self.terminated: list[str] = []

    def terminate_all_actors(self) -> None:
        self.terminated = list(self.pool)


class _RayBackend:
    """Flower's ``RayBackend`` as far as ``QueuedBackend`` uses it."""

    def __init__(self, actors: list[str]) -> None:
        self.actors, self.pool = actors, None

    def build(self, app_fn: object) -> None:
        self.pool, self.app_fn = _Pool(self.actors), app_fn

    @property
    def num_workers(self) -> int:
        return self.pool.num_actors

    def is_worker_idle(self) -> bool:
        return bool(self.pool.pool)

    def process_message(self, message: object, context: object) -> tuple[object, object]:
        return message, context

    def terminate(self) -> None:
        self.pool.terminate_all_actors()


def test_each_actor_gets_depth_slots_and_is_asked_to_exit_once() -> None:
    inner = _RayBackend(["a", "b"])
    backend = QueuedBackend(inner, 3)
    backend.build(lambda: None)
    assert backend.num_workers == 6  # the engine starts a worker thread per slot
    assert inner.pool.pool == ["a", "b"] * 3  # interleaved: both actors busy first
    taken = [inner.pool.pool.pop() for _ in range(4)]
    assert sorted(taken) == ["a", "a", "b", "b"] and backend.is_worker_idle()
    assert backend.process_message("m", "c") == ("m", "c")
    backend.terminate()
    assert inner.pool.terminated == ["a", "b"]


def test_depth_one_keeps_flowers_pool() -> None:
    inner = _RayBackend(["a", "b"])
    backend = QueuedBackend(inner, 1)
    backend.build(lambda: client_app.app)
    assert inner.pool.pool == ["a", "b"] and backend.num_workers == 2
    backend.terminate()
    assert inner.pool.terminated == ["a", "b"]


def test_fedmetas_app_travels_by_reference() -> None:
    """Flower's loader is a closure over the ClientApp, which Ray pickles by value with
    every message; the workers get ``client_app.load_app`` instead, a few bytes."""
    app = client_app.app
    flowers = lambda: app  # noqa: E731 (as Flower's ``_load_client_app``)
    inner = _RayBackend(["a"])
    QueuedBackend(inner, 1).build(flowers)
    assert inner.app_fn is client_app.load_app and inner.app_fn() is app
    assert len(cloudpickle.dumps(inner.app_fn)) < 200 < len(cloudpickle.dumps(flowers))
    another = ClientApp()
    assert worker_queue.by_reference(lambda: another)() is another


def test_flowers_engine_is_untouched_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    monkeypatch.setattr(vce_api, "run_api",
                        lambda app_fn, backend_fn, *rest: seen.append(backend_fn()))
    flower = vce_api.run_api
    monkeypatch.setattr(worker_queue, "RayBackend", _RayBackend)
    with pytest.raises(RuntimeError):
        with queued_workers(2):
            vce_api.run_api(None, lambda: _RayBackend(["a"]))
            vce_api.run_api(None, lambda: "another backend")
            raise RuntimeError("the run failed")
    assert vce_api.run_api is flower
    assert isinstance(seen[0], QueuedBackend) and seen[0].depth == 2
    assert seen[1] == "another backend"
    with pytest.raises(ValueError, match="at least 1"):
        with queued_workers(0):
            pass


def test_the_engine_gets_a_thread_for_every_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's engine runs ``backend.num_workers`` loops in a ``ThreadPoolExecutor()`` of
    Python's default size (6 threads on 2 cores, never more than 32): under
    ``queued_workers`` every loop gets a thread, so that all 40 slots of 20 actors are busy
    at once (without it the barrier below times out)."""
    source = inspect.getsource(vce_api.run_api)  # what the patch relies on in Flower's
    assert "ThreadPoolExecutor()" in source and "range(backend.num_workers)" in source
    seen: dict[str, int] = {}

    def flowers_run_api(app_fn: object, backend_fn: object, *rest: object) -> None:
        backend = backend_fn()
        backend.build(app_fn)
        with vce_api.ThreadPoolExecutor() as pool:
            seen["threads"] = pool._max_workers
            barrier = threading.Barrier(backend.num_workers, timeout=5)
            list(pool.map(lambda _: barrier.wait(), range(backend.num_workers)))

    monkeypatch.setattr(vce_api, "run_api", flowers_run_api)
    monkeypatch.setattr(worker_queue, "RayBackend", _RayBackend)
    with queued_workers(2):
        vce_api.run_api(lambda: client_app.app,
                        lambda: _RayBackend([f"actor{i}" for i in range(20)]))
    assert seen["threads"] == 40
    assert vce_api.ThreadPoolExecutor is ThreadPoolExecutor


def test_devices_that_may_hang_keep_one_slot() -> None:
    assert worker_queue.worker_queue(Config()) == 2
    cfg = Config(simulation=SimulationConfig(worker_queue=4), faults=FaultsConfig(hang=0.1))
    assert worker_queue.worker_queue(cfg) == 1


@pytest.mark.parametrize("value", [0, -1, 65])
def test_a_bad_worker_queue_is_refused(value: int) -> None:
    with pytest.raises(ConfigError, match="simulation.worker_queue"):
        from_flat({"simulation.worker_queue": value})


def test_a_batch_over_one_sends_several_messages_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    monkeypatch.setattr(vce_api, "run_api",
                        lambda app_fn, backend_fn, *rest: seen.append(backend_fn()))
    monkeypatch.setattr(worker_queue, "RayBackend", _RayBackend)
    with queued_workers(2, 4):
        vce_api.run_api(None, lambda: _RayBackend(["a"]))
    with queued_workers(2, 1):
        vce_api.run_api(None, lambda: _RayBackend(["a"]))
    batched, queued = seen
    assert isinstance(batched, BatchedBackend) and (batched.depth, batched.batch) == (2, 4)
    assert batched.loader is worker_queue.by_reference  # the app by reference, as queued
    assert isinstance(queued, QueuedBackend) and queued.depth == 2
    with pytest.raises(ValueError, match="at least 1"):
        with queued_workers(1, 0):
            pass
