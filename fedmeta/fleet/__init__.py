"""Heterogeneous edge fleets: device profiles, budgets, availability, simulated clock, bytes.

Pure (no Flower): ``fedmeta.app`` asks it which devices train in a round and what each
does, and records its simulated times. Start with ``FleetRun.from_config``; the parts:
``profiles`` (built-in hardware), ``fleet`` (tiers sampled from the seed), ``availability``
(trace files), ``traces`` and ``flgo`` (FedScale's and FLGo's measured traces), ``cost``
(FLOPs and memory per algorithm and model), ``plan`` (the local plan under a deadline),
``compression`` (update encodings) and ``run`` (the clock).
"""

from .compression import COMPRESSIONS, encoded_bytes, roundtrip
from .cost import ModelCost, episode_flops, memory_bytes
from .fleet import Fleet, Tier, parse_tiers
from .plan import FALLBACKS, POLICIES, LocalPlan, Work, local_plan
from .profiles import PROFILES, DeviceProfile, load_profiles
from .run import FleetRun, check, enabled

__all__ = ["COMPRESSIONS", "DeviceProfile", "FALLBACKS", "Fleet", "FleetRun", "LocalPlan",
           "ModelCost", "POLICIES", "PROFILES", "Tier", "Work", "check", "enabled",
           "encoded_bytes", "episode_flops", "load_profiles", "local_plan", "memory_bytes",
           "parse_tiers", "roundtrip"]
