"""The loss-threshold attack (Yeom et al. 2018): a candidate whose loss under the target
model is low was likely trained on. Its score is the negative loss."""

from __future__ import annotations

import numpy as np

from .metrics import AttackResult, evaluate


def loss_threshold(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> AttackResult:
    """AUC and TPR at 1% FPR of thresholding the loss, with their intervals."""
    return evaluate("loss-threshold", -np.asarray(member_losses, float),
                    -np.asarray(nonmember_losses, float))
