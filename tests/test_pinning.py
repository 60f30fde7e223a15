"""Ray workers pinned to cores of their own (``fedmeta.app.pinning``,
``simulation.pin_workers``): each live process claims cores no other live process holds, one
process more than cores gets none, a worker of two CPUs claims two or none, a claim ends with
its process, pinning moves every thread of the process (those started before and after), in
real Ray workers two actors end up on two cores, all their threads (Ray's own included)
with them, and workers of a fraction of a CPU are refused. That a pinned run computes what
an unpinned one does, byte for byte, is checked in tests/test_federated_run.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedmeta.app import pinning, worker_queue
from fedmeta.app.worker_queue import queued_workers
from fedmeta.config import from_flat
from fedmeta.errors import ConfigError

CLAIM = ("import sys; from pathlib import Path; from fedmeta.app.pinning import claim_cores; "
         "print(claim_cores(Path(sys.argv[1]), int(sys.argv[2])), flush=True); "
         "sys.stdin.read()")


def claimers(folder: Path, count: int, cores: int = 1
             ) -> tuple[list[subprocess.Popen[str]], list[str]]:
    """``count`` processes, started one after another, each claiming ``cores`` cores in
    ``folder`` and holding them until its stdin closes; what each claimed."""
    procs, got = [], []
    for _ in range(count):
        proc = subprocess.Popen([sys.executable, "-c", CLAIM, str(folder), str(cores)],
                                text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        procs.append(proc)
        got.append(proc.stdout.readline().strip())
    return procs, got


def release(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_live_processes_claim_distinct_cores_and_one_too_many_gets_none(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    procs, got = claimers(tmp_path, len(cores) + 1)
    try:
        assert got == [str([c]) for c in cores] + ["None"]
    finally:
        release(procs)
    procs, got = claimers(tmp_path, 1)  # the claims ended with their processes
    release(procs)
    assert got == [str([cores[0]])]


def test_a_worker_of_two_cpus_claims_two_cores_or_none(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    procs, got = claimers(tmp_path, 2, cores=2)
    try:
        assert got == [str(cores[:2]), "None" if len(cores) < 4 else str(cores[2:4])]
    finally:
        release(procs)
    procs, got = claimers(tmp_path, 1, cores=len(cores))  # nothing was left held by the None
    release(procs)
    assert got == [str(cores)]


def test_an_unwritable_claims_folder_leaves_the_worker_unpinned(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert pinning.claim_cores(blocker / "claims") is None  # a file where a folder would be


def test_pinning_moves_every_thread_before_and_after() -> None:
    """In a fresh process (pinning this one would pin pytest): a thread started before and
    one started after the pin both run on the core."""
    script = """
import os, threading
from fedmeta.app.pinning import pin_threads
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
core = max(os.sched_getaffinity(0))
pin_threads([core])
after = threading.Thread(target=stop.wait); after.start()
tids = [before.native_id, after.native_id, threading.get_native_id()]
print(core, [sorted(os.sched_getaffinity(t)) for t in tids])
stop.set()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    core, affinities = out.stdout.split(" ", 1)
    assert affinities.strip() == str([[int(core)]] * 3)


def test_two_ray_workers_are_pinned_to_two_cores_with_all_their_threads(
        tmp_path: Path) -> None:
    """(Claimed in a folder of the test's own: a pinned worker of another run that is still
    exiting cannot take a core from it.)"""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    import ray

    @ray.remote(num_cpus=1)
    class Probe:
        def __init__(self, folder: Path) -> None:
            pinning.pin_worker(1, folder)

        def threads(self) -> list[list[int]]:
            return [sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")]

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        probes = [Probe.remote(tmp_path) for _ in range(2)]
        seen = ray.get([p.threads.remote() for p in probes])
    finally:
        ray.shutdown()
    cores = [{tuple(a) for a in threads} for threads in seen]
    assert all(len(c) == 1 and len(next(iter(c))) == 1 for c in cores), cores
    assert cores[0] != cores[1]


def test_pin_workers_gives_the_ray_workers_the_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    class _RayBackend:
        def __init__(self) -> None:
            self.actor_kwargs: dict[str, object] = {}

    from flwr.server.superlink.fleet.vce import vce_api

    seen: list[object] = []
    monkeypatch.setattr(vce_api, "run_api",
                        lambda app_fn, backend_fn, *rest: seen.append(backend_fn()))
    monkeypatch.setattr(worker_queue, "RayBackend", _RayBackend)
    for batch in (1, 4):
        for pin in (0, 2):
            with queued_workers(2, batch, pin):
                vce_api.run_api(None, _RayBackend)
    kwargs = [b.backend.actor_kwargs for b in seen]
    assert kwargs[0] == kwargs[2] == {}
    for pinned in (kwargs[1], kwargs[3]):
        init = pinned["on_actor_init_fn"]
        assert (init.func, init.args) == (pinning.pin_worker, (2,))
    cfg = from_flat({"simulation.pin_workers": True, "simulation.num_cpus": 2})
    assert worker_queue.pinned_cores(cfg) == 2
    assert worker_queue.pinned_cores(from_flat({"simulation.num_cpus": 2})) == 0


def test_pin_workers_is_a_boolean_off_by_default() -> None:
    assert from_flat({}).simulation.pin_workers is False
    assert from_flat({"simulation.pin_workers": "true"}).simulation.pin_workers is True
    with pytest.raises(ConfigError, match="simulation.pin_workers"):
        from_flat({"simulation.pin_workers": "sometimes"})
    with pytest.raises(ConfigError, match=r"simulation.pin_workers.*num_cpus \(0.5\)"):
        from_flat({"simulation.pin_workers": True, "simulation.num_cpus": 0.5})


def test_a_thread_that_ended_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def gone(tid: int, cores: set[int]) -> None:
        calls.append(tid)
        raise ProcessLookupError

    monkeypatch.setattr(pinning.os, "sched_setaffinity", gone)
    monkeypatch.setattr(pinning.os, "listdir", lambda _: ["1", "2"])
    pinning.pin_threads([0])
    assert calls == [1, 2]
