"""Ray workers pinned to cores of their own (``simulation.pin_workers``).

Linux moves a busy thread between cores as other threads wake (the driver, Ray's daemons),
and a moved learner finds its core's private caches cold. On a 2-core AMD EPYC with two
workers, pinning them took the overhead share of a small-model round from medians of 16% and
15% to 13% and 13% in two protocols of seven interleaved pairs each, single runs spreading
over 8-24% (docs/scale.md, "Seventh look"). Each worker claims as many cores as it has CPUs
in Ray (``simulation.num_cpus``, a whole number), the first of those it may run on that no
other pinned worker of this user on this host holds (an exclusive ``flock`` on
``<tmp>/fedmeta-cores-<uid>/core-<n>.lock`` each, released by the kernel when the worker
exits, however it exits), and pins all its threads to them; threads it starts later inherit
them. With too few cores left unclaimed (more workers than cores, or another pinned run on
the host), a worker runs unpinned, as without the setting. Nothing a device computes
changes, only where it runs.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

_claims: list[int] = []  # the held locks' file descriptors: open for the worker's whole life


def claims_folder() -> Path:
    """Where this user's workers on this host claim cores."""
    return Path(tempfile.gettempdir()) / f"fedmeta-cores-{os.getuid()}"


def claim_cores(folder: Path, count: int = 1) -> list[int] | None:
    """Claim the first ``count`` cores this process may run on that no live process has
    claimed in ``folder``: their numbers, the claims held until this process exits; None
    (nothing held) if fewer are free or ``folder`` cannot be written."""
    held: list[tuple[int, int]] = []  # (core, its lock's descriptor)
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        for core in sorted(os.sched_getaffinity(0)):
            if len(held) == count:
                break
            fd = os.open(folder / f"core-{core}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another live process holds it
                os.close(fd)
                continue
            held.append((core, fd))
    except OSError:
        pass
    if len(held) < count:
        for _, fd in held:
            os.close(fd)  # closing the descriptor releases its lock
        return None
    _claims.extend(fd for _, fd in held)
    return [core for core, _ in held]


def pin_threads(cores: list[int]) -> None:
    """Pin every thread of this process to ``cores`` (``sched_setaffinity`` sets one
    thread)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            pass


def pin_worker(cores: int = 1, folder: Path | None = None) -> None:
    """A Ray worker's start (``on_actor_init_fn``, with its number of CPUs): pinned to that
    many cores of its own, if as many are free (claimed in ``folder``, by default
    ``claims_folder()``)."""
    if _claims:  # pinned already
        return
    claimed = claim_cores(folder or claims_folder(), cores)
    if claimed is not None:
        pin_threads(claimed)
