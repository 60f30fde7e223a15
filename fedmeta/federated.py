"""The federated algorithms by name: which learner a device runs, and their defaults.

Every algorithm is the same loop (devices take ``local_steps`` SGD steps of ``local_lr``
along their learner's direction, the server averages the pseudo-gradients
``theta - theta_local`` weighted by episodes and steps its optimizer); they differ in the
learner, in whether evaluation fine-tunes on the support set, and in the defaults of that
loop, which a config's ``"auto"`` values take.

- ``fedavg`` (McMahan et al. 2017): plain FedAvg on pooled support+query data, scored
  without adaptation; ``fedavg-ft`` trains the same and fine-tunes before scoring.
- ``fedmeta-*`` (Chen et al. 2018, "Federated Meta-Learning with Fast Convergence"): each
  device sends its meta-gradient (one local step of size 1), the server steps Adam.
- ``fedmeta-protonet``, ``-matching``, ``-relation``, ``-snail``, ``-leo``: the same FedMeta
  loop for the metric and model-based learners (Chen et al. 2018 federate MAML and Meta-SGD;
  the loop needs only a meta-gradient). A device sends the meta-gradient of its local
  meta-training on its own episodes: the gradient of the mean query loss of episodes whose
  classes the support set defines (for LEO, through its latent and fine-tuning steps); the
  server takes the episode-weighted mean and steps Adam. A held-out device adapts with no
  gradient step on the meta-parameters: the support set gives the prototypes, attention
  keys, class feature maps or sequence (LEO: ``eval_steps`` latent steps, then its
  fine-tuning steps, on the decoded classifier).
- ``fedreptile``: devices send ``theta - mean(phi)``, the server takes Reptile's outer step.
- ``perfedavg`` / ``perfedavg-hf`` (Fallah et al. 2020): local steps of Per-FedAvg's first-order
  or Hessian-free update, averaged by the server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FederatedAlgorithm:
    """A federated algorithm: its device learner, evaluation and loop defaults."""

    learner: str
    fine_tunes: bool
    local_steps: int
    local_lr: float
    server_optimizer: str
    server_lr: float


_FEDAVG = dict(local_steps=5, local_lr=0.01, server_optimizer="sgd", server_lr=1.0)
_FEDMETA = dict(local_steps=1, local_lr=1.0, server_optimizer="adam", server_lr=0.01)
_PERFEDAVG = dict(local_steps=5, local_lr=0.01, server_optimizer="sgd", server_lr=1.0)

FEDERATED_ALGORITHMS: dict[str, FederatedAlgorithm] = {
    "fedavg": FederatedAlgorithm("joint", fine_tunes=False, **_FEDAVG),
    "fedavg-ft": FederatedAlgorithm("joint", fine_tunes=True, **_FEDAVG),
    "fedmeta-maml": FederatedAlgorithm("maml", fine_tunes=True, **_FEDMETA),
    "fedmeta-fomaml": FederatedAlgorithm("fomaml", fine_tunes=True, **_FEDMETA),
    "fedmeta-metasgd": FederatedAlgorithm("metasgd", fine_tunes=True, **_FEDMETA),
    "fedmeta-anil": FederatedAlgorithm("anil", fine_tunes=True, **_FEDMETA),
    "fedmeta-protonet": FederatedAlgorithm("protonet", fine_tunes=True, **_FEDMETA),
    "fedmeta-matching": FederatedAlgorithm("matching", fine_tunes=True, **_FEDMETA),
    "fedmeta-relation": FederatedAlgorithm("relation", fine_tunes=True, **_FEDMETA),
    "fedmeta-snail": FederatedAlgorithm("snail", fine_tunes=True, **_FEDMETA),
    "fedmeta-leo": FederatedAlgorithm("leo", fine_tunes=True, **_FEDMETA),
    "fedreptile": FederatedAlgorithm("reptile", fine_tunes=True, local_steps=1, local_lr=1.0,
                                     server_optimizer="sgd", server_lr=1.0),
    "perfedavg": FederatedAlgorithm("perfedavg-fo", fine_tunes=True, **_PERFEDAVG),
    "perfedavg-hf": FederatedAlgorithm("perfedavg-hf", fine_tunes=True, **_PERFEDAVG),
}

SERVER_OPTIMIZERS = ("adam", "sgd")


def adapt_steps(algorithm: FederatedAlgorithm, inner_steps: int, eval_steps: int,
                evaluation: bool) -> int:
    """Adaptation steps before scoring: ``eval_steps`` in evaluation, ``inner_steps`` on
    training episodes, 0 for an algorithm that does not fine-tune (plain FedAvg)."""
    if not algorithm.fine_tunes:
        return 0
    return eval_steps if evaluation else inner_steps
