"""Ray workers pinned one to a core (``simulation.pin_workers``).

Linux moves a busy thread between cores as other threads wake (the driver, Ray's daemons),
and a moved learner finds its private caches cold: on a 2-core AMD EPYC, two workers left to
the scheduler spent 5-18% more CPU time per device on the same learning than the reference
timed alone, pinned ones 1-5% (docs/scale.md, "Seventh look"). Each worker claims the first
core of those it may run on that no other pinned worker of this user on this host holds (an
exclusive ``flock`` on ``<tmp>/fedmeta-cores-<uid>/core-<n>.lock``, released by the kernel
when the worker exits, however it exits) and pins all its threads there; threads it starts
later inherit it. With every core claimed (more workers than cores, or another pinned run
on the host), a worker runs unpinned, as without the setting. Nothing a device computes
changes, only where it runs.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

_claim: list[int] = []  # the held lock's file descriptor: open for the worker's whole life


def claims_folder() -> Path:
    """Where this user's workers on this host claim cores."""
    return Path(tempfile.gettempdir()) / f"fedmeta-cores-{os.getuid()}"


def claim_core(folder: Path) -> int | None:
    """Claim the first core this process may run on that no live process has claimed in
    ``folder``: its number, the claim held until this process exits; None if all are held
    (or ``folder`` cannot be written)."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    for core in sorted(os.sched_getaffinity(0)):
        try:
            fd = os.open(folder / f"core-{core}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another live process holds it
            os.close(fd)
            continue
        _claim.append(fd)
        return core
    return None


def pin_threads(core: int) -> None:
    """Pin every thread of this process to ``core`` (``sched_setaffinity`` sets one thread)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            pass


def pin_worker() -> None:
    """A Ray worker's start (``on_actor_init_fn``): pinned to a core of its own, if one is
    free."""
    if _claim:  # pinned already
        return
    core = claim_core(claims_folder())
    if core is not None:
        pin_threads(core)
