"""Soak: a long faulty run on Ray, killed with SIGKILL once and resumed, against the same
run uninterrupted.

1,000 sinusoid devices (10 held out), 10% of the training devices sampled per round, 200
rounds, 20% of replies crashing, 5% NaN and 5% malformed; the server state is saved every
round. Run A goes straight through; run B is killed (SIGKILL to its whole process group:
the CLI, Ray and its workers) when its saved state reaches ``--kill-at`` and resumed with
``fedmeta run --resume``. Checked: both finish, B's ``results.csv`` equals A's byte for
byte and their final meta-parameters are equal, and the memory of A's process tree (the CLI
with Ray's GCS, raylet and workers; RSS summed, sampled every second) grows by at most 10%
from round 20 to the last round (median of the samples taken while rounds 20-24 and
rounds R-4..R were running, not while Ray shuts down after the last). Results:
``benchmarks/results/soak.json``.

    nice python benchmarks/soak.py [--devices 1000] [--rounds 200] [--kill-at 100]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import cpu_name  # noqa: E402

from fedmeta.checkpoint import Checkpoint  # noqa: E402
from fedmeta.server_state import STATE_FILE, ServerState  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MAX_GROWTH = 0.10  # of the process tree's memory, from round 20 to the last


def config_toml(devices: int, rounds: int) -> str:
    """The soak's config: 10% of the training devices a round, evaluation every 50."""
    return f"""\
[train]
seed = 26

[faults]
crash = 0.2
nan = 0.05
malformed = 0.05

[federation]
num_devices = {devices}
num_held_out = 10
rounds = {rounds}
fraction_train = 0.1
meta_batch = 5
eval_every = 50
eval_episodes = 5

[simulation]
num_cpus = 1
ray_cpus = 2
"""


def saved_round(state: Path) -> int:
    """The round of the server state last saved (-1: none yet, or caught mid-replace)."""
    try:
        return ServerState.load(state).round
    except Exception:  # noqa: BLE001 (not written yet)
        return -1


class Watch:
    """Samples, every ``every_s``, the summed RSS of a process tree and the saved round."""

    def __init__(self, proc: subprocess.Popen, state: Path, every_s: float = 1.0) -> None:
        self.proc, self.state, self.every_s = proc, state, every_s
        self.samples: list[tuple[float, int, int]] = []  # (time, round saved, RSS bytes)
        self.round, self._mtime = -1, 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        root = psutil.Process(self.proc.pid)
        while self.proc.poll() is None:
            try:
                mtime = self.state.stat().st_mtime_ns
            except OSError:
                mtime = 0
            if mtime != self._mtime:
                self._mtime, self.round = mtime, max(self.round, saved_round(self.state))
            rss = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for p in tree:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append((time.monotonic(), self.round, rss))
            time.sleep(self.every_s)

    def rss_during(self, first: int, last: int) -> float:
        """Median RSS (MB) of the samples taken while rounds ``first+1..last+1`` ran."""
        values = [rss for _, r, rss in self.samples if first <= r <= last]
        return statistics.median(values) / 2**20 if values else float("nan")

    def join(self) -> None:
        self._thread.join(timeout=30)


def fedmeta_run(log: Path, *args: str) -> subprocess.Popen:
    """``fedmeta run`` in its own process group, its output to ``log`` (a pipe left unread
    while we wait would fill with the warnings of dropped replies and stall the run)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("a") as out:
        return subprocess.Popen([sys.executable, "-m", "fedmeta", "run", "--no-progress",
                                 *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)


def finish(proc: subprocess.Popen, log: Path, what: str) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"{what} exited {proc.returncode}:\n{log.read_text()[-3000:]}")


def soak(devices: int, rounds: int, kill_at: int, folder: Path) -> dict[str, Any]:
    """Run A straight, B killed at ``kill_at`` and resumed; return what was measured."""
    config = folder / "soak.toml"
    config.write_text(config_toml(devices, rounds))
    a, b = folder / "a", folder / "b"
    start = time.monotonic()
    straight = fedmeta_run(folder / "a.log", "--config", str(config), "--out", str(a))
    watch = Watch(straight, a / STATE_FILE)
    finish(straight, folder / "a.log", "the uninterrupted run")
    watch.join()
    wall_a = time.monotonic() - start
    (folder / "a_memory.json").write_text(json.dumps({  # kept, should B not finish
        "wall_s": wall_a, "samples": watch.samples,
        "rss_tree_mb_round_20": watch.rss_during(19, 23),
        "rss_tree_mb_last_rounds": watch.rss_during(rounds - 5, rounds - 1)}))

    start = time.monotonic()
    killed = fedmeta_run(folder / "b.log", "--config", str(config), "--out", str(b))
    try:
        while saved_round(b / STATE_FILE) < kill_at:
            if killed.poll() is not None:
                raise SystemExit(f"run B ended before round {kill_at}: {killed.returncode}")
            time.sleep(0.5)
        os.killpg(killed.pid, signal.SIGKILL)  # the CLI, Ray and every worker
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    killed_after = saved_round(b / STATE_FILE)
    resumed = fedmeta_run(folder / "b.log", "--resume", str(b))
    finish(resumed, folder / "b.log", "the resumed run")
    wall_b = time.monotonic() - start

    same_csv = (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    pa, pb = (Checkpoint.load(d / "checkpoint.pt").params for d in (a, b))
    same_params = all(torch.equal(pa[k], pb[k]) for k in pa)
    early, late = watch.rss_during(19, 23), watch.rss_during(rounds - 5, rounds - 1)
    times = [t for t, r, _ in watch.samples]
    return {"devices": devices, "rounds": rounds, "kill_at": kill_at,
            "killed_after_round": killed_after, "same_results_csv": same_csv,
            "same_final_params": same_params, "wall_s_uninterrupted": round(wall_a, 1),
            "wall_s_killed_and_resumed": round(wall_b, 1),
            "rss_tree_mb_round_20": round(early, 1),
            "rss_tree_mb_last_rounds": round(late, 1),
            "rss_growth": round(late / early - 1, 4) if early == early else None,
            "rss_tree_mb_peak": round(max(rss for *_, rss in watch.samples) / 2**20, 1),
            "samples": len(times),
            "summary": json.loads((a / "summary.json").read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--kill-at", type=int, default=None, help="default: rounds // 2")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--keep", type=Path, default=None,
                        help="run in this folder and keep it (logs, both runs' outputs)")
    args = parser.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="fedmeta-soak-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        result = soak(args.devices, args.rounds, args.kill_at or args.rounds // 2, folder)
    result.update(started=started, cpu=cpu_name(), cores=os.cpu_count(),
                  load_at_end=os.getloadavg(),
                  command=" ".join(["python", "benchmarks/soak.py", *sys.argv[1:]]))
    ok = (result["same_results_csv"] and result["same_final_params"]
          and (result["rss_growth"] is not None and result["rss_growth"] <= MAX_GROWTH))
    result["passed"] = bool(ok)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
