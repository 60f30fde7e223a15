"""FLGo's phone traces (pings.csv availability, Ookla Speedtest network) read into fedmeta
fleets: small CSVs written here in the datasets' formats, availability checked against a
direct implementation of FLGo's slot lookup, devices mapped in turn, link rates replacing
the tiers' and FedScale's, and bad files named with the line at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmeta.config import from_dict
from fedmeta.errors import ConfigError
from fedmeta.fleet import PROFILES, Fleet, FleetRun, parse_tiers
from fedmeta.fleet.flgo import load_network, load_pings
from fedmeta.fleet.traces import Capacity
from fedmeta.meta import build_learner
from fedmeta.models import MLP
from fedmeta.tasks.factory import build_tasks

T0 = 1_496_275_200  # the first row's timestamp (Unix s)
# (customer id, seconds after the first row): rows of pings.csv in file order. Customer 3 and
# 5 have 5 rows each, 8 and 11 two (8's are one ping twice; 11's start before the first row).
PINGS = [(5, 0), (3, 45), (5, 15), (11, -15), (3, 60), (5, 30), (8, 150), (3, 75),
         (5, 90), (11, 0), (8, 150), (5, 105), (3, 285), (3, 300)]
ORDER = [3, 5, 8, 11]  # most pings first, ties by id (numerically: 8 before 11)
PERIOD = 300  # the last timestamp after shifting

OOKLA_HEADER = ("Name,Number of Records,Devices,Tests,Avg. Avg U Kbps,Avg. Avg D Kbps,"
                "Avg Lat Ms,Avg. Pop2005,Rank Upload,Rank Download,Rank Latency")
OOKLA = {  # Kaggle "Speedtest by Ookla" file name -> rows (country, up, down), as written
    "fixed_year_2020_quarter_01.csv": [("Brazil", '"20,000"', '"60,000.5"'),
                                       ("Albania", '"1,000"', "3000")],
    "fixed_year_2020_quarter_02.csv": [("Albania", "3000", '"5,000"'),
                                       ("Chile", "7000.25", '"9,000"')],
    "mobile_year_2020_quarter_01.csv": [("Brazil", "800", '"2,400"'),
                                        ("Albania", "400", "1200")],
}
# fixed countries by name (averaged over quarters), then mobile ones: (up, down) kbit/s
ENTRIES = [(2000.0, 4000.0), (20000.0, 60000.5), (7000.25, 9000.0), (400.0, 1200.0),
           (800.0, 2400.0)]


def write_pings(tmp_path: Path, rows=PINGS, text: str | None = None) -> str:
    path = tmp_path / "pings.csv"
    path.write_text(text if text is not None else
                    "id,timestamp\n" + "".join(f"{c},{T0 + s}\n" for c, s in rows))
    load_pings.cache_clear()
    return str(path)


def write_ookla(folder: Path, files: dict = OOKLA) -> str:
    folder.mkdir(exist_ok=True)
    for name, rows in files.items():
        lines = [f'{n},"1,234",567,"2,345",{u},{d},25,"3,153,731",80,90,70' for n, u, d in rows]
        (folder / name).write_text("\n".join([OOKLA_HEADER, *lines]) + "\n")
    load_network.cache_clear()
    return str(folder)


def flgo_on(customer: int, t: float) -> bool:
    """FLGo's rule (phone_simulator.update_client_availability), written out: shift so the
    first row is 0, take ``t mod`` the last timestamp, round down to a 15 s slot, look the
    customer up among that slot's pings."""
    slots = {(c, s) for c, s in PINGS}  # already shifted
    t = t % max(s for _, s in PINGS)
    return (customer, t - t % 15) in slots


def customers_by_pings() -> list[int]:
    ids = [c for c, _ in PINGS]
    return sorted(set(ids), key=lambda c: (-ids.count(c), c))


def test_pings_give_flgos_availability_at_every_time(tmp_path) -> None:
    behaviour = load_pings(write_pings(tmp_path))
    assert customers_by_pings() == ORDER and len(behaviour) == 4
    assert behaviour.periods.tolist() == [PERIOD] * 4
    fleet = Fleet.sample(parse_tiers("phone:1", PROFILES, 3), 6, seed=0).with_traces(
        None, behaviour, 1.0)
    customer = [ORDER[d % 4] for d in range(6)]  # device d: the d mod 4-th customer
    grid = np.arange(0, 3 * PERIOD + 30, 7.5)  # slot boundaries, mid-slots, past periods
    times = np.concatenate([grid, grid + 1e-6, grid[1:] - 1e-6,
                            np.random.default_rng(0).uniform(0, 5 * PERIOD, 300)])
    for t in times:
        expected = [flgo_on(c, float(t)) for c in customer]
        assert fleet.available(1, float(t)).tolist() == expected, t
    seen = np.array([fleet.available(1, float(t)) for t in times])
    assert seen.any(axis=0).all() and not seen.all(axis=0).any()  # each device on and off


def test_consecutive_pings_merge_into_windows(tmp_path) -> None:
    b = load_pings(write_pings(tmp_path))
    windows = [list(zip(b.starts[b.offsets[c]:b.offsets[c + 1]],
                        np.round(b.ends[b.offsets[c]:b.offsets[c + 1]], 6)))
               for c in range(len(b))]
    assert windows == [[(45, 90), (285, 315)], [(0, 45), (90, 120)], [(150, 165)],
                       [(-15, 15)]]  # [first, last + 15), ends just below
    assert (b.ends < np.round(b.ends)).all()


def test_ookla_rates_are_averaged_per_country_and_kind(tmp_path) -> None:
    network = load_network(write_ookla(tmp_path / "ookla"))
    assert list(zip(network.up_kbps, network.down_kbps)) == ENTRIES
    one = load_network(str(tmp_path / "ookla" / "mobile_year_2020_quarter_01.csv"))
    assert one.up_kbps.tolist() == [400.0, 800.0]  # a single file: its countries by name


def test_network_gives_the_links_and_wins_over_capacity(tmp_path) -> None:
    network = load_network(write_ookla(tmp_path / "ookla"))
    capacity = Capacity(np.array([20.0, 80.0]), np.array([5000.0, 800.0]))
    fleet = Fleet.sample(parse_tiers("phone:1:0.5", PROFILES, 3), 7, seed=0)
    traced = fleet.with_traces(capacity, None, 3000.0, network)
    up, down = np.array([ENTRIES[d % 5] for d in range(7)]).T  # device d: entry d mod 5
    np.testing.assert_allclose(traced.uplink_mbps, up / 1000)
    np.testing.assert_allclose(traced.downlink_mbps, down / 1000)
    np.testing.assert_allclose(traced.flops, 3000.0 / (np.array([20.0, 80.0] * 4)[:7] / 1000))


def test_a_run_reads_pings_on_its_clock_and_ookla_links(tmp_path) -> None:
    cfg = from_dict({"federation": {"num_devices": 5, "num_held_out": 1, "rounds": 2,
                                    "min_train_devices": 4, "fraction_train": 1.0},
                     "fleet": {"tiers": "jetson-nano:1", "policy": "wait",
                               "trace_behaviour": write_pings(tmp_path),
                               "trace_network": write_ookla(tmp_path / "ookla")}})
    tasks = build_tasks(cfg.task, seed=0, fleet=(5, 1))
    learner = build_learner("maml", MLP(), inner_lr=0.01)
    run = FleetRun.from_config(cfg, learner, tasks.train.sample(np.random.default_rng(0)))
    np.testing.assert_allclose(run.fleet.uplink_mbps, [u / 1000 for u, _ in ENTRIES])
    devices = [0, 1, 2, 3]
    assert run.select(1, devices, 4) == [1, 3]  # at t = 0: customers 5 and 11
    start = run.elapsed_s
    assert start > 0
    assert run.select(2, devices, 4) == [d for d in devices if flgo_on(ORDER[d], start)]


@pytest.mark.parametrize(("text", "message"), [
    ("", "FLGo's pings.csv \\(id,timestamp\\): No columns"),
    ("id,time\n1,0\n", "missing \\['timestamp'\\]"),
    ("id,timestamp\n", "at least one row"),
    (f"id,timestamp\n1,{T0}\n7,soon\n", "line 3 \\(id '7'\\).*'timestamp': a number >= 0"),
    ("id,timestamp\n1,0\n7,-15\n", "line 3 \\(id '7'\\).*'timestamp': a number >= 0"),
    (f"id,timestamp\n1,{T0}\n,{T0 + 15}\n", "line 3.*'id': a customer id"),
    (f"id,timestamp\n1,{T0}\n2,{T0 + 20}\n", "line 3 \\(id '2'\\).*multiple of 15"),
    (f"id,timestamp\n1,{T0}\n2,{T0}\n", "period"),
])
def test_bad_pings_are_named(tmp_path, text, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_pings(write_pings(tmp_path, text=text))
    assert caught.value.field == "fleet.trace_behaviour" and "pings.csv" in str(caught.value)


def test_a_missing_pings_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="can be read") as caught:
        load_pings(str(tmp_path / "absent.csv"))
    assert caught.value.field == "fleet.trace_behaviour"


@pytest.mark.parametrize(("rows", "message"), [
    ([("Brazil", "-5", "100")], "line 2 \\(Name 'Brazil'\\).*'Avg. Avg U Kbps': a number > 0"),
    ([("Chile", "5", "100"), ("Peru", "5", "fast")], "line 3 \\(Name 'Peru'\\).*D Kbps"),
    ([("Chile", "0", "100")], "'Avg. Avg U Kbps': a number > 0, got '0'"),
    ([("", "5", "100")], "line 2.*'Name': a country"),
])
def test_bad_ookla_rows_are_named(tmp_path, rows, message) -> None:
    folder = write_ookla(tmp_path / "ookla", {"fixed_year_2020_quarter_01.csv": rows})
    with pytest.raises(ConfigError, match=message) as caught:
        load_network(folder)
    assert caught.value.field == "fleet.trace_network"
    assert "fixed_year_2020_quarter_01.csv" in str(caught.value)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("absent.csv", None, "no such file or folder"),
    ("empty.csv", "", "an Ookla Speedtest CSV: No columns"),
    ("short.csv", "Name,Avg. Avg U Kbps\nChile,5\n", "missing \\['Avg. Avg D Kbps'\\]"),
    ("head.csv", OOKLA_HEADER + "\n", "at least one row"),
    ("none", None, "has none"),
])
def test_bad_ookla_files_are_named(tmp_path, name, text, message) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    elif name == "none":
        path.mkdir()
    load_network.cache_clear()
    with pytest.raises(ConfigError, match=message) as caught:
        load_network(str(path))
    assert caught.value.field == "fleet.trace_network" and name in str(caught.value)


def test_the_config_checks_the_network_and_needs_tiers(tmp_path) -> None:
    folder = write_ookla(tmp_path / "ookla")
    with pytest.raises(ConfigError) as caught:
        from_dict({"fleet": {"trace_network": folder}})
    assert caught.value.field == "fleet.tiers"
    with pytest.raises(ConfigError) as caught:
        from_dict({"fleet": {"tiers": "phone:1", "policy": "wait",
                             "trace_network": str(tmp_path / "absent")}})
    assert caught.value.field == "fleet.trace_network"
    assert from_dict({"fleet": {"tiers": "phone:1", "policy": "wait",
                                "trace_network": folder}}).fleet.trace_network == folder
