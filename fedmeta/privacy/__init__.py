"""Privacy of federated meta-training: clipping, noise, accounting, attacks. No Flower.

- ``clipping``: per-device L2 clipping of a meta-update, fixed or adaptive (Andrew et al.).
- ``sampling``: Poisson or fixed-size sampling of a round's devices, and its adjacency.
- ``mechanism``: the Gaussian mechanism on the server's mean or on a device's own update,
  with secret noise.
- ``accounting``: each device's epsilon from Opacus' RDP or PRV accountant.
- ``attacks``: membership inference (loss threshold, LiRA) with AUC and TPR at low FPR.

``fedmeta.app.privacy_wrap`` plugs these into the FedMeta strategy and the ClientApp.
"""
