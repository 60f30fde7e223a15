"""Meta-learning algorithms on torch.func; no Flower, no devices.

Ten lines of central meta-training::

    from fedmeta.meta import build_learner, MetaTrainer
    from fedmeta.models import MLP
    from fedmeta.tasks.sinusoid import SinusoidTasks
    learner = build_learner("maml", MLP(), inner_lr=0.01, inner_steps=1)
    trainer = MetaTrainer(learner, meta_lr=1e-3)
    params = trainer.train(SinusoidTasks(k_shot=10), iterations=1000, meta_batch=25, seed=0)
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .anil import ANIL
from .base import MetaLearner, MetaUpdate, Params
from .fomaml import FirstOrderMAML
from .joint import JointTraining
from .leo import Leo
from .maml import MAML
from .matching import MatchingNet
from .metasgd import MetaSGD
from .perfedavg import PerFedAvgFO, PerFedAvgHF
from .protonet import ProtoNet
from .relation import RelationNet
from .reptile import Reptile
from .snail import Snail
from .trainer import MetaTrainer

ALGORITHMS: dict[str, type[MetaLearner]] = {
    cls.name: cls for cls in (MAML, FirstOrderMAML, Reptile, MetaSGD, ANIL, ProtoNet,
                              JointTraining, PerFedAvgFO, PerFedAvgHF, MatchingNet,
                              RelationNet, Snail, Leo)
}


def build_learner(name: str, model: nn.Module, **kwargs: object) -> MetaLearner:
    """The meta-learner called ``name`` (one of ``ALGORITHMS``) over ``model``."""
    if name not in ALGORITHMS:
        raise ConfigError("algorithm", name, f"one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](model, **kwargs)


__all__ = ["ALGORITHMS", "ANIL", "MAML", "FirstOrderMAML", "JointTraining", "Leo",
           "MatchingNet", "MetaLearner", "MetaSGD", "MetaTrainer", "MetaUpdate", "Params",
           "PerFedAvgFO", "PerFedAvgHF", "ProtoNet", "RelationNet", "Reptile", "Snail",
           "build_learner"]
