"""Membership inference against meta-models and devices' adapted models (torch/numpy only).

- ``metrics``: ROC AUC and TPR at a low FPR from member / non-member scores.
- ``loss_threshold``: Yeom et al. 2018, lower loss means member.
- ``lira``: the likelihood-ratio attack of Carlini et al. 2022 with shadow adaptations.
- ``targets``: the statistics these attacks read from a learner (per-episode losses of the
  meta-model, per-example confidences of adapted models).
"""

from .lira import lira
from .loss_threshold import loss_threshold
from .metrics import AttackResult, roc_auc, tpr_at_fpr

__all__ = ["AttackResult", "lira", "loss_threshold", "roc_auc", "tpr_at_fpr"]
