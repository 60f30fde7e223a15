"""A fleet in the federated loop, without Ray (tests/local_grid.py): only available devices
train, plans are followed (partial work, fewer episodes), late devices are dropped or waited
for, results carry the simulated clock, and the same config gives the same simulated times."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedmeta.app import client_app
from fedmeta.app.records import METRICS, NUM_EXAMPLES
from fedmeta.app.server_app import run_federation
from fedmeta.config import from_dict
from fedmeta.fleet import Fleet, load_profiles, parse_tiers
from fedmeta.results import table
from local_grid import LocalGrid


PROFILES = """\
[fast]
flops = 1e9
memory_gb = 1
uplink_mbps = 100
downlink_mbps = 100

[slow]
flops = 2e6
memory_gb = 1
uplink_mbps = 100
downlink_mbps = 100
"""
CLOCK = ["sim_round_s", "sim_time_s", "available", "sampled", "stragglers", "partial",
         "fallback", "sim_bytes_down", "sim_bytes_up", "participants_fast", "participants_slow"]


def run(tmp_path: Path, federation: dict | None = None,
        **fleet: object) -> tuple[pd.DataFrame, RecordingGrid]:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    cfg = from_dict({"train": {"seed": 3},
                     "federation": {"num_devices": 8, "num_held_out": 2, "rounds": 3,
                                    "eval_every": 3, "fraction_train": 1.0, "meta_batch": 4,
                                    "eval_episodes": 2, **(federation or {})},
                     "fleet": {"tiers": "fast:0.5, slow:0.5", "profiles_file": str(profiles),
                               **fleet}})
    rows: list = []
    grid = RecordingGrid(client_app.app, 8)
    run_federation(grid, cfg, rows.append)
    return table(rows), grid


class RecordingGrid(LocalGrid):
    """A LocalGrid that keeps, per training round, (partition, episodes) of each reply."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.rounds: list[list[tuple[int, int]]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        if messages and messages[0].metadata.message_type == "train":
            self.rounds.append(sorted(
                (self.contexts[r.metadata.src_node_id].node_config["partition-id"],
                 int(r.content[METRICS][NUM_EXAMPLES])) for r in replies))
        return replies


def trained(grid: RecordingGrid) -> list[list[tuple[int, int]]]:
    """Per round with training: (partition, episodes) of each reply, by partition."""
    return grid.rounds


def test_same_config_same_simulated_times_and_no_host_clock(tmp_path: Path) -> None:
    a, _ = run(tmp_path, deadline_s=1.0, compression="int8")
    b, _ = run(tmp_path, deadline_s=1.0, compression="int8")
    pd.testing.assert_frame_equal(a, b)
    train = a[a["source"] == "train"]
    assert list(train["sim_time_s"]) == pytest.approx(list(train["sim_round_s"].cumsum()))
    assert train[CLOCK].notna().all().all()
    assert a[a["source"] == "eval"][CLOCK].isna().all().all()


def test_partial_policy_slow_devices_send_fewer_episodes_within_the_deadline(
        tmp_path: Path) -> None:
    frame, grid = run(tmp_path, deadline_s=1.0, policy="partial")
    train = frame[frame["source"] == "train"]
    assert (train["sim_round_s"] <= 1.0).all()
    assert (train["partial"] > 0).all() and (train["stragglers"] == 0).all()
    episodes = {e for r in trained(grid) for _, e in r}
    assert 4 in episodes and min(episodes) < 4  # fast devices full, slow ones partial
    assert list(train["episodes"]) != [6 * 4] * 3


def test_drop_policy_drops_the_late_and_the_round_lasts_the_deadline(tmp_path: Path) -> None:
    frame, grid = run(tmp_path, deadline_s=1.0, policy="drop")
    train = frame[frame["source"] == "train"]
    assert (train["stragglers"] == train["participants_slow"].rsub(3)).all()  # 3 slow train
    assert (train["participants_slow"] == 0).all() and (train["sim_round_s"] == 1.0).all()
    assert all(e == 4 for r in trained(grid) for _, e in r)
    assert (train["devices"] == train["participants_fast"]).all()


def test_wait_policy_waits_for_the_slowest(tmp_path: Path) -> None:
    frame, _ = run(tmp_path, policy="wait")
    train = frame[frame["source"] == "train"]
    assert (train["stragglers"] == 0).all() and (train["sim_round_s"] > 1.0).all()
    assert (train["devices"] == 6).all()


def test_only_available_devices_are_sampled(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text("100\n010\n")  # slow devices on in round 1 or 2, in turn; fast never
    tiers = f"fast:0.5:0:0, slow:0.5:0:{trace}"
    frame, grid = run(tmp_path, {"short_round": "skip"}, policy="wait", tiers=tiers)
    fleet = Fleet.sample(parse_tiers(tiers, load_profiles(tmp_path / "profiles.toml"), 3), 8,
                         seed=3)
    on = [[p for p in range(6) if fleet.available(r)[p]] for r in (1, 2, 3)]
    assert [p for r in on for p in r] and not on[2]
    train = frame[frame["source"] == "train"]
    assert list(train["available"]) == [len(r) for r in on]
    assert list(train["participants_fast"]) == [0, 0, 0]
    assert [[p for p, _ in r] for r in trained(grid)] == [r for r in on if r]
    assert train["sim_round_s"].iloc[-1] == 0.0


def test_no_fleet_no_clock_columns(tmp_path: Path) -> None:
    cfg = from_dict({"federation": {"num_devices": 4, "num_held_out": 1, "rounds": 1,
                                    "eval_every": 1, "meta_batch": 2, "eval_episodes": 2}})
    rows: list = []
    run_federation(LocalGrid(client_app.app, 4), cfg, rows.append)
    assert not set(CLOCK) & set(table(rows).columns)


def test_summary_gives_the_simulated_time(tmp_path: Path) -> None:
    from fedmeta.results import summarize_run
    frame, _ = run(tmp_path, policy="wait")
    summary = summarize_run(frame, "fedmeta-maml", 3, 1.0)
    assert summary["sim_time_s"] == frame["sim_time_s"].max() > 0
