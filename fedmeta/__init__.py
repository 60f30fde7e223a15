"""fedmeta: federated meta-learning on simulated fleets of edge devices."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["simulate"]


def __getattr__(name: str) -> Any:
    """``fedmeta.simulate`` loads Flower and Ray only when first used."""
    if name == "simulate":
        from .app.simulation import simulate

        return simulate
    raise AttributeError(f"module 'fedmeta' has no attribute {name!r}")
