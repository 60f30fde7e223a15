"""The Flower App: a ServerApp with the FedMeta strategy and a ClientApp per device.

The only package of fedmeta that imports ``flwr``. ``flwr run .`` loads
``fedmeta.app.server_app:app`` and ``fedmeta.app.client_app:app`` (see ``pyproject.toml``);
``fedmeta.simulate`` runs the same apps on Flower's simulation engine from Python.
"""
