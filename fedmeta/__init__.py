"""fedmeta: federated meta-learning on simulated fleets of edge devices."""

__version__ = "0.1.0"
