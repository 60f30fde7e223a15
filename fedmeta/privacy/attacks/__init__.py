"""Membership inference against meta-models and devices' adapted models (torch/numpy only).

- ``metrics``: ROC AUC and TPR at a low FPR from member / non-member scores, with 95%
  intervals (bootstrap for the AUC, Clopper-Pearson for the TPR).
- ``loss_threshold``: Yeom et al. 2018, lower loss means member.
- ``lira``: the likelihood-ratio attack of Carlini et al. 2022 with shadow adaptations.
- ``targets``: the statistics these attacks read from a learner (per-episode losses of the
  meta-model, per-example confidences of adapted models).
"""

from .lira import lira
from .loss_threshold import loss_threshold
from .metrics import AttackResult, auc_interval, clopper_pearson, roc_auc, tpr_at_fpr

__all__ = ["AttackResult", "auc_interval", "clopper_pearson", "lira", "loss_threshold",
           "roc_auc", "tpr_at_fpr"]
