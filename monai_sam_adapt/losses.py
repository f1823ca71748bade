"""Losses of our networks (MONAI's own are used as they are in the bundles: ``DiceFocalLoss(gamma=0)`` is Dice + BCE
per label channel)."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

__all__ = ["AutoSAMLoss"]


class AutoSAMLoss(nn.Module):
    """BCE + Dice (MONAI ``DiceLoss``, sigmoid per class) on the SAM output, plus the same on h's output when the
    network returns both (``AutoSAM(output="both")``: channels ``[sam_1..K, h_1..K]``).

    Args:
        num_classes: K. Default 1.
        surrogate_weight: weight of h's loss (it does not reach g, so it only trains h). Default 1.
        lambda_dice / lambda_bce: weights of the two terms. Default 1 and 1.
    """

    def __init__(
        self, num_classes: int = 1, surrogate_weight: float = 1.0, lambda_dice: float = 1.0, lambda_bce: float = 1.0
    ) -> None:
        super().__init__()
        self.k, self.w_h = num_classes, surrogate_weight
        self.dice = DiceLoss(sigmoid=True)
        self.bce = nn.BCEWithLogitsLoss()
        self.l_dice, self.l_bce = lambda_dice, lambda_bce

    def _one(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.l_dice * self.dice(logits, target) + self.l_bce * self.bce(logits, target)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float()
        if pred.shape[1] == self.k:
            return self._one(pred, target)
        if pred.shape[1] == 2 * self.k:
            return self._one(pred[:, : self.k], target) + self.w_h * self._one(pred[:, self.k :], target)
        raise ValueError(f"expected {self.k} or {2 * self.k} channels, got {pred.shape[1]}.")
