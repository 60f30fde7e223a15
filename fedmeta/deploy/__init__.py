"""Deployment on Flower's deployment engine: TLS certificates, SuperNode keys, and a local
federation of ``flower-superlink`` and ``flower-supernode`` processes (``fedmeta deploy``).

Only Flower's commands are run here (as subprocesses); nothing imports ``flwr``.
"""
