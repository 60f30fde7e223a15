"""Several messages per Ray call (``fedmeta.app.ray_batches``): the backend hands every
message its own reply or error, makes calls of at most ``batch`` messages spread over the
actors, keeps ``depth`` calls per actor, fails the messages of a call Ray could not run,
and fails waiting messages when it terminates; a worker runs each message of a call as
Flower's actor runs one, and a message's error is the one Flower's actor would raise. That a
batched run computes what Flower's pool does, byte for byte, through Ray, is checked end to
end in tests/test_federated_run.py (the CLI run uses the default batch of 8)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
from flwr.simulation.ray_transport.ray_actor import VirtualClientEngineActor

from fedmeta.app import ray_batches
from fedmeta.app.ray_batches import (
    BatchedBackend,
    RemoteTraceback,
    call_size,
    raised,
    run_jobs,
)
from fedmeta.app.worker_queue import worker_batch
from fedmeta.config import Config, FaultsConfig, SimulationConfig, from_flat
from fedmeta.errors import ConfigError


class _Actor:
    """A Ray actor handle as the backend uses it: ``run_batch.remote(...).future()``; each
    call waits for ``gate`` and replies per message ``(message, cid)`` or the error a
    message named ``boom`` raises."""

    def __init__(self, name: str, gate: threading.Event, calls: list[tuple[str, int]]) -> None:
        self.name, self.gate, self.calls = name, gate, calls
        self.run_batch = SimpleNamespace(remote=self._remote)
        self.lock = threading.Lock()

    def _remote(self, app_fn: object, jobs: list[tuple[Any, str, Any]]) -> Any:
        with self.lock:
            self.calls.append((self.name, len(jobs)))
        done: Future[list[Any]] = Future()

        def reply() -> None:
            self.gate.wait(5)
            if any(message == "ray-fails" for message, _, _ in jobs):
                done.set_exception(RuntimeError("the actor died"))
                return
            outcomes = [(None, None, (False, "boom", "Traceback: boom"))
                        if message == "boom" else ((message, cid), context, None)
                        for message, cid, context in jobs]
            short = any(message == "short" for message, _, _ in jobs)  # one reply missing
            done.set_result(outcomes[:-1] if short else outcomes)

        threading.Thread(target=reply, daemon=True).start()
        return SimpleNamespace(future=lambda: done)


class _Pool:
    """Flower's ``BasicActorPool`` as far as the backend uses it."""

    made: list[_Pool] = []

    def __init__(self, actor_type: object, client_resources: dict[str, float],
                 actor_kwargs: dict[str, object]) -> None:
        self.actors_capacity, self.pool, self.num_actors = 2, [], 0
        _Pool.made.append(self)

    def add_actors_to_pool(self, n: int) -> None:
        self.pool += [_Actor(f"actor{i}", _GATE, _CALLS) for i in range(n)]
        self.num_actors += n


class _RayBackend:
    def __init__(self) -> None:
        self.client_resources, self.actor_kwargs = {"num_cpus": 1}, {}
        self.pool: _Pool | None = None
        self.terminated: list[str] = []

    def terminate(self) -> None:
        assert self.pool is not None
        self.terminated = [a.name for a in self.pool.pool]


_GATE, _CALLS = threading.Event(), []


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(ray_batches, "BasicActorPool", _Pool)
    _GATE.clear()
    _CALLS.clear()
    made: list[BatchedBackend] = []

    def build(depth: int, batch: int) -> BatchedBackend:
        made.append(BatchedBackend(_RayBackend(), depth, batch))  # type: ignore[arg-type]
        made[-1].build(lambda: "app")  # type: ignore[arg-type, return-value]
        return made[-1]

    yield build
    _GATE.set()
    for b in made:
        if not b.stopped:
            b.terminate()


def _until(condition: Any, what: str, seconds: float = 10.0) -> None:
    """Wait for ``condition()``; fail naming ``what`` after ``seconds`` (never hang)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.01)


def _context(partition: int) -> Any:
    return SimpleNamespace(node_config={"partition-id": partition})


def _send(backend: BatchedBackend, messages: list[str]) -> list[Any]:
    """Every message through ``process_message`` at once, from threads as the engine's:
    each one's reply, or the exception it raised."""
    def one(i: int) -> Any:
        try:
            return backend.process_message(messages[i], _context(i))  # type: ignore[arg-type]
        except Exception as ex:  # noqa: BLE001
            return ex

    with ThreadPoolExecutor(len(messages)) as threads:
        futures = [threads.submit(one, i) for i in range(len(messages))]
        _until(lambda: len(backend.waiting) + sum(n for _, n in _CALLS) == len(messages),
               "every message handed in or sent")
        _GATE.set()
        return [f.result(5) for f in futures]


def test_each_message_gets_its_own_reply_in_calls_of_at_most_batch(backend: Any) -> None:
    b = backend(1, 4)
    assert b.num_workers == 2 * 1 * 4  # the engine's threads: a message each
    replies = _send(b, [f"m{i}" for i in range(20)])
    assert [r[0] for r in replies] == [(f"m{i}", str(i)) for i in range(20)]
    assert all(r[1].node_config["partition-id"] == i for i, r in enumerate(replies))
    assert sum(n for _, n in _CALLS) == 20 and max(n for _, n in _CALLS) <= 4
    assert {name for name, _ in _CALLS} == {"actor0", "actor1"}


def test_a_call_takes_at_most_its_slots_share_of_the_waiting_messages(backend: Any) -> None:
    """While both actors (a slot each) are busy, 7 messages wait: the next call takes 3 of
    them (7 // 2 slots), then 2 of the 4 left, then one a call (so that a round's last
    messages spread over the actors and they finish together)."""
    b = backend(1, 8)
    with ThreadPoolExecutor(9) as threads:
        futures = [threads.submit(b.process_message, f"m{i}", _context(i)) for i in range(2)]
        _until(lambda: len(_CALLS) == 2, "a call per actor")
        futures += [threads.submit(b.process_message, f"m{i}", _context(i))
                    for i in range(2, 9)]
        _until(lambda: len(b.waiting) == 7, "seven messages waiting")
        _GATE.set()
        assert [f.result(5)[0][0] for f in futures] == [f"m{i}" for i in range(9)]
    assert [n for _, n in _CALLS] == [1, 1, 3, 2, 1, 1]


@pytest.mark.parametrize(("waiting", "slots", "batch", "size"), [
    (100, 4, 8, 8), (20, 4, 8, 5), (7, 4, 8, 1), (3, 4, 8, 1), (1, 1, 8, 1), (9, 1, 8, 8),
    (50, 200, 8, 1), (400, 200, 8, 2), (5, 1, 1, 1)])
def test_call_sizes(waiting: int, slots: int, batch: int, size: int) -> None:
    assert call_size(waiting, slots, batch) == size


def test_each_actor_gets_depth_calls_at_once(backend: Any) -> None:
    b = backend(3, 2)
    assert b.num_workers == 2 * 3 * 2
    assert list(b.free) == b.actors * 3 and b.is_worker_idle()
    with ThreadPoolExecutor(6) as threads:
        futures = []
        for i in range(6):  # one at a time, so that each call takes one message
            futures.append(threads.submit(b.process_message, f"m{i}", _context(i)))
            _until(lambda n=i + 1: len(_CALLS) == n, f"call {i + 1} made")
        assert not b.is_worker_idle()  # six calls in flight: every slot taken
        _GATE.set()
        assert len([f.result(5) for f in futures]) == 6
    assert sorted(name for name, _ in _CALLS) == ["actor0"] * 3 + ["actor1"] * 3


def test_a_failing_message_fails_alone_with_flowers_error(backend: Any) -> None:
    replies = _send(backend(1, 8), ["m0", "boom", "m2"])
    assert replies[0][0] == ("m0", "0") and replies[2][0] == ("m2", "2")
    assert isinstance(replies[1], ClientAppException)
    assert str(replies[1]) == str(ClientAppException("boom"))  # as Flower's actor raises it
    assert isinstance(replies[1].__cause__, RemoteTraceback)


def test_a_call_ray_could_not_run_fails_each_of_its_messages(backend: Any) -> None:
    replies = _send(backend(1, 8), ["ray-fails"])
    assert isinstance(replies[0], RuntimeError) and "the actor died" in str(replies[0])


def test_a_call_answered_short_fails_its_messages_and_frees_its_slot(backend: Any) -> None:
    b = backend(1, 8)
    replies = _send(b, ["short"])
    assert isinstance(replies[0], RuntimeError)
    assert "answered 0 messages of a call of 1" in str(replies[0])
    _until(lambda: len(b.free) == 2, "both actor slots free again")
    assert b.process_message("m1", _context(1))[0] == ("m1", "1")


def test_terminate_fails_waiting_messages_and_asks_each_actor_once(backend: Any) -> None:
    b = backend(2, 4)
    with ThreadPoolExecutor(12) as threads:
        futures = [threads.submit(b.process_message, f"m{i}", _context(i)) for i in range(12)]
        _until(lambda: len(b.waiting) + sum(n for _, n in _CALLS) == 12,
               "every message handed in or sent")
        b.terminate()
        _GATE.set()
        outcomes = [f.exception(5) for f in futures]
    assert b.backend.terminated == ["actor0", "actor1"]  # each actor once, not per slot
    failed = [o for o in outcomes if o is not None]
    assert failed and all("terminated" in str(o) for o in failed)
    with pytest.raises(RuntimeError, match="terminated"):
        b.process_message("late", _context(0))


class _App(VirtualClientEngineActor):
    """Flower's actor base, as a worker holds it (``run`` is Flower's own)."""


def _app(message: str, context: Any) -> Any:
    if message == "boom":
        raise ValueError("the device crashed")
    return f"reply to {message}"


def test_a_worker_runs_each_message_as_flowers_actor_does() -> None:
    actor = _App()
    jobs = [("m0", "0", "c0"), ("boom", "1", "c1"), ("m2", "2", "c2")]
    outcomes = run_jobs(actor, lambda: _app, jobs)  # type: ignore[arg-type]
    assert outcomes[0] == ("reply to m0", "c0", None)
    assert outcomes[2] == ("reply to m2", "c2", None)
    with pytest.raises(ClientAppException) as flowers:
        actor.run(lambda: _app, "boom", "1", "c1")  # type: ignore[arg-type]
    error = raised(outcomes[1][2])  # type: ignore[arg-type]
    assert type(error) is ClientAppException and str(error) == str(flowers.value)
    assert "ValueError: the device crashed" in str(error.__cause__)


def test_an_app_that_does_not_load_is_flowers_load_error() -> None:
    def load() -> Any:
        raise LoadClientAppError("no such app")

    outcome = run_jobs(_App(), load, [("m", "0", "c")])[0]
    error = raised(outcome[2])  # type: ignore[arg-type]
    assert type(error) is LoadClientAppError and str(error) == "no such app"


def test_devices_that_may_hang_get_one_message_a_call() -> None:
    assert worker_batch(Config()) == 8
    cfg = Config(simulation=SimulationConfig(worker_batch=4), faults=FaultsConfig(hang=0.1))
    assert worker_batch(cfg) == 1


@pytest.mark.parametrize("value", [0, -1, 1025])
def test_a_bad_worker_batch_is_refused(value: int) -> None:
    with pytest.raises(ConfigError, match="simulation.worker_batch"):
        from_flat({"simulation.worker_batch": value})


def test_a_backend_needs_one_message_a_call_at_least() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BatchedBackend(_RayBackend(), 1, 0)  # type: ignore[arg-type]
