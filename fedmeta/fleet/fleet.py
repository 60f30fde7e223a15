"""A fleet: devices drawn from tiers of profiles, reproducibly from the seed.

A tier is ``profile:share:spread[:availability]``: a share of the devices get that profile,
each device's FLOP/s and link rates multiplied by its own log-normal factors
``exp(spread * z)``, ``z ~ N(0, 1)`` (median 1; ``spread=0``: all alike). ``availability``
overrides the profile's: a probability, or the path of a trace file (``availability.py``).
Tier sizes are the shares rounded by largest remainder; which device gets which tier is a
seeded permutation, so the tiers are spread over partitions. Measured FedScale and FLGo
traces (``traces.py``, ``flgo.py``, ``with_traces``) then replace what they measure: compute
and link rates, and availability on the simulated clock.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .availability import load_trace
from .flgo import Network
from .profiles import DeviceProfile
from .traces import Behaviour, Capacity, trace_clients

FLEET_STREAM, AVAILABILITY_STREAM = 0xF1EE7, 0xA7A11


@dataclass(frozen=True)
class Tier:
    """A share of the fleet with one profile, a spread, and optional availability."""

    profile: DeviceProfile
    share: float
    spread: float = 0.0
    availability: float | None = None  # overrides the profile's probability
    trace: np.ndarray | None = None  # (patterns, rounds) booleans, overrides both

    @property
    def name(self) -> str:
        return self.profile.name


def parse_tiers(spec: str, profiles: dict[str, DeviceProfile], rounds: int) -> list[Tier]:
    """Tiers from ``"profile:share:spread[:availability], ..."``; ``ConfigError`` on bad input
    (unknown profile, share outside (0, 1], negative spread, shares not summing to 1, a bad
    availability or trace file, a profile listed twice)."""
    tiers, field = [], "fleet.tiers"
    for item in (s.strip() for s in spec.split(",")):
        parts = [p.strip() for p in item.split(":", 3)]
        if len(parts) < 2 or not parts[0]:
            raise ConfigError(field, item, "profile:share[:spread[:availability]], e.g. "
                                           "raspberry-pi-4:0.5:0.2")
        name = parts[0]
        if name not in profiles:
            raise ConfigError(field, name, f"a profile among {sorted(profiles)}")
        if any(t.name == name for t in tiers):
            raise ConfigError(field, name, "each profile in one tier only")
        share = _number(parts[1], f"{field} ({name} share)")
        if not 0.0 < share <= 1.0:
            raise ConfigError(f"{field} ({name} share)", share, "a share in (0, 1]")
        spread = _number(parts[2], f"{field} ({name} spread)") if len(parts) > 2 else 0.0
        if not (math.isfinite(spread) and spread >= 0):
            raise ConfigError(f"{field} ({name} spread)", spread, "a finite number >= 0")
        availability, trace = None, None
        if len(parts) > 3:
            try:
                availability = float(parts[3])
            except ValueError:
                trace = load_trace(parts[3], rounds)
            if availability is not None and not 0.0 <= availability <= 1.0:
                raise ConfigError(f"{field} ({name} availability)", availability,
                                  "a probability in [0, 1] or a trace file path")
        tiers.append(Tier(profiles[name], share, spread, availability, trace))
    total = sum(t.share for t in tiers)
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ConfigError(field, spec, f"tier shares that sum to 1 (they sum to {total:g})")
    return tiers


def _number(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(field, text, "a number") from None


def tier_sizes(shares: list[float], n: int) -> np.ndarray:
    """``n`` split by ``shares``, rounded by largest remainder (ties: earlier tier)."""
    exact = np.array(shares) * n
    sizes = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[:n - sizes.sum()]] += 1
    return sizes


@dataclass(frozen=True)
class Fleet:
    """Per-device arrays (index = partition id) of a fleet drawn from tiers."""

    tiers: list[Tier]
    tier: np.ndarray  # tier index of each device
    flops: np.ndarray  # FLOP/s
    uplink_mbps: np.ndarray
    downlink_mbps: np.ndarray
    seed: int
    behaviour: Behaviour | None = None  # availability windows on the simulated clock

    @classmethod
    def sample(cls, tiers: list[Tier], num_devices: int, seed: int) -> Fleet:
        """``num_devices`` devices: tier sizes from the shares, a seeded assignment and
        spread."""
        rng = np.random.default_rng([seed, FLEET_STREAM])
        sizes = tier_sizes([t.share for t in tiers], num_devices)
        tier = rng.permutation(np.repeat(np.arange(len(tiers)), sizes))
        spread = np.array([t.spread for t in tiers])[tier]
        factors = np.exp(spread[None, :] * rng.standard_normal((3, num_devices)))
        base = np.array([[t.profile.flops, t.profile.uplink_mbps, t.profile.downlink_mbps]
                         for t in tiers])[tier].T
        flops, up, down = base * factors
        return cls(tiers, tier, flops, up, down, seed)

    def __len__(self) -> int:
        return len(self.tier)

    def with_traces(self, capacity: Capacity | None, behaviour: Behaviour | None,
                    forward_flops: float, network: Network | None = None) -> Fleet:
        """This fleet with device ``d`` taking the ``d mod n``-th client of each trace
        (``traces.py``, ``flgo.py``): from ``capacity``, FLOP/s ``forward_flops / latency``
        (one forward pass of one example of the run's model takes the measured latency) and
        both link rates the measured bandwidth; from ``behaviour``, its availability
        windows; from ``network``, its uplink and downlink rates (over ``capacity``'s)."""
        changes: dict[str, object] = {"behaviour": behaviour}
        if capacity is not None:
            client = trace_clients(len(self), len(capacity))
            mbps = capacity.communication_kbps[client] / 1000.0
            changes.update(flops=forward_flops / (capacity.computation_ms[client] / 1000.0),
                           uplink_mbps=mbps, downlink_mbps=mbps.copy())
        if network is not None:
            entry = trace_clients(len(self), len(network))
            changes.update(uplink_mbps=network.up_kbps[entry] / 1000.0,
                           downlink_mbps=network.down_kbps[entry] / 1000.0)
        return dataclasses.replace(self, **changes)

    def profile(self, device: int) -> DeviceProfile:
        """Device ``device``'s own profile (its tier's, with its spread applied)."""
        base = self.tiers[self.tier[device]].profile
        return DeviceProfile(base.name, float(self.flops[device]), base.memory_gb,
                             float(self.uplink_mbps[device]),
                             float(self.downlink_mbps[device]),
                             self.availability_probability[device])

    @property
    def availability_probability(self) -> np.ndarray:
        return np.array([t.profile.availability if t.availability is None else t.availability
                         for t in self.tiers])[self.tier]

    def available(self, server_round: int, time_s: float | None = None) -> np.ndarray:
        """Which devices are on in ``server_round`` (1-based), starting at simulated second
        ``time_s``: with a behaviour trace, whether ``time_s`` falls in one of the device's
        windows (``time_s`` is then required); else a seeded draw per device against its
        probability, or its trace line (devices of a tier take lines in turn)."""
        if self.behaviour is not None:
            if time_s is None:
                raise ValueError("a fleet with a behaviour trace is on or off by the "
                                 "simulated clock: give time_s")
            return self.behaviour.on(trace_clients(len(self), len(self.behaviour)), time_s)
        draw = np.random.default_rng([self.seed, server_round, AVAILABILITY_STREAM])
        on = draw.random(len(self)) < self.availability_probability
        for index, t in enumerate(self.tiers):
            if t.trace is not None:
                members = np.flatnonzero(self.tier == index)
                lines = np.arange(len(members)) % len(t.trace)
                on[members] = t.trace[lines, (server_round - 1) % t.trace.shape[1]]
        return on
