"""Device profiles: what an edge device can compute, hold and send, and how often it is on.

The built-in figures are *sustained* rates for small-batch float32 training, not datasheet
peaks: peak FP32 FLOP/s from the vendor's specification times an assumed utilisation, the
memory an app can use beside the OS, and typical link rates. Change them with a profiles
file (``fleet.profiles_file``) when you know your hardware.

Sources and assumptions:

- Jetson Nano (4 GB): 128 Maxwell CUDA cores at 921 MHz = 236 GFLOP/s FP32 peak (NVIDIA
  Jetson Nano module datasheet, 472 GFLOP/s FP16); 25% utilisation -> 60 GFLOP/s. 4 GB
  LPDDR4 shared by CPU and GPU -> 2 GB for training. Wi-Fi/Ethernet: 20/50 Mbit/s up/down.
- Jetson Orin Nano (8 GB): 1024 Ampere CUDA cores at 625 MHz = 1.28 TFLOP/s FP32 peak (NVIDIA
  Jetson Orin Nano series datasheet); 25% -> 320 GFLOP/s. 8 GB LPDDR5 -> 6 GB for training.
  20/50 Mbit/s up/down.
- Coral Dev Board: the Edge TPU (4 TOPS int8, Coral datasheet) runs inference only, so
  training runs on its NXP i.MX 8M quad Cortex-A53 at 1.5 GHz: 4 cores x 8 FP32 FLOP/cycle
  (NEON FMA) = 48 GFLOP/s peak; 10% -> 5 GFLOP/s. 1 GB LPDDR4 -> 0.5 GB. 10/30 Mbit/s.
- Raspberry Pi 4 (4 GB): 4 Cortex-A72 at 1.5 GHz; HPL/LINPACK measurements report about
  9-13 GFLOP/s FP64 on all cores; 8 GFLOP/s assumed for FP32 training. 4 GB -> 2 GB.
  5/25 Mbit/s up/down (a weak uplink: Wi-Fi at the edge of range, shared DSL).
- Mid-range phone (a 2022-23 Snapdragon 7-series / Tensor-class phone on its CPU): 30 GFLOP/s
  sustained; 6 GB RAM of which an app keeps about 1.5 GB. 4G/5G median rates (Ookla Speedtest
  Global Index, mobile): 10/40 Mbit/s up/down. On only when idle, charging and on an
  unmetered network (Bonawitz et al. 2019, "Towards Federated Learning at Scale"): 0.3.
- Availability of the boards (always-on, occasionally rebooted or offline): 0.9-0.95.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import ConfigError


@dataclass(frozen=True)
class DeviceProfile:
    """An edge device: sustained FLOP/s, memory for training, link rates, availability.

    ``availability`` is the probability that the device is on (reachable and willing) in a
    round. Bad values raise ``ConfigError`` naming the profile's field.
    """

    name: str
    flops: float  # FLOP/s sustained for float32 training
    memory_gb: float  # memory a training process may use
    uplink_mbps: float  # device -> server, Mbit/s
    downlink_mbps: float  # server -> device, Mbit/s
    availability: float = 1.0

    def __post_init__(self) -> None:
        for name in ("flops", "memory_gb", "uplink_mbps", "downlink_mbps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"profile {self.name!r}: {name}", value, "a finite number > 0")
        if isinstance(self.availability, bool) or not isinstance(self.availability, (int, float)) \
                or not 0.0 <= self.availability <= 1.0:
            raise ConfigError(f"profile {self.name!r}: availability", self.availability,
                              "a probability in [0, 1]")


PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile("jetson-nano", 60e9, 2.0, 20.0, 50.0, 0.95),
    DeviceProfile("jetson-orin-nano", 320e9, 6.0, 20.0, 50.0, 0.95),
    DeviceProfile("coral-dev-board", 5e9, 0.5, 10.0, 30.0, 0.9),
    DeviceProfile("raspberry-pi-4", 8e9, 2.0, 5.0, 25.0, 0.9),
    DeviceProfile("phone", 30e9, 1.5, 10.0, 40.0, 0.3),
)}


def load_profiles(path: str | Path) -> dict[str, DeviceProfile]:
    """The built-in profiles plus (or overridden by) those of a TOML file, one table each::

        [my-board]
        flops = 2e10          # FLOP/s
        memory_gb = 1.0
        uplink_mbps = 5
        downlink_mbps = 20
        availability = 0.8    # optional, default 1
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("fleet.profiles_file", str(path), "an existing TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
        raise ConfigError("fleet.profiles_file", str(path), f"a valid TOML file ({exc})") \
            from None
    allowed = {f.name for f in fields(DeviceProfile)} - {"name"}
    profiles = dict(PROFILES)
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"fleet.profiles_file [{name}]", table, "a table of fields")
        unknown = set(table) - allowed
        if unknown:
            raise ConfigError(f"fleet.profiles_file [{name}]", sorted(unknown),
                              f"fields among {sorted(allowed)}")
        missing = allowed - {"availability"} - set(table)
        if missing:
            raise ConfigError(f"fleet.profiles_file [{name}]", sorted(table),
                              f"also {sorted(missing)}")
        profiles[name] = DeviceProfile(name, **table)
    return profiles
