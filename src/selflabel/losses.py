"""Training losses: the paper's Dice + cross-entropy, with ignored voxels and per-voxel weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from selflabel.labels import IGNORE_INDEX


class DiceCELoss(torch.nn.Module):
    """``ce_weight * CE + dice_weight * (1 - mean organ Dice)``, skipping voxels labelled `ignore_index`.

    Dice is the soft Dice of the softmax over the whole batch, per organ class (background excluded), averaged:
    ``(2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)``. `reduce` sums the Dice and CE statistics over DDP ranks
    (autograd-aware), so several processes compute the one-process loss of the global batch.

    Args:
        logits: (B, C, H, W). target: (B, H, W) int64 in [0, C) or `ignore_index`.
    Returns:
        (loss, {"ce": float, "dice": float}) where "dice" is the mean soft Dice.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        smooth: float = 1e-5,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.reduce = reduce or (lambda t: t)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = logits.float()
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        ce_sum = F.cross_entropy(logits, safe, reduction="none")[valid].sum()
        probs = torch.softmax(logits, dim=1) * valid[:, None]
        onehot = F.one_hot(safe, self.num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid[:, None]
        dims = (0, 2, 3)
        stats = torch.stack(
            [(probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)]
        )  # (3, C): intersection, predicted, ground truth
        totals = self.reduce(torch.cat([stats.flatten(), ce_sum[None], valid.sum()[None].float()]))
        stats, ce_sum, count = totals[:-2].view(3, -1), totals[-2], totals[-1]
        inter, pred, gt = stats[:, 1:]
        dice = ((2 * inter + self.smooth) / (pred + gt + self.smooth)).mean()
        ce = ce_sum / count.clamp_min(1)
        loss = self.ce_weight * ce + self.dice_weight * (1 - dice)
        return loss, {"ce": float(ce.detach()), "dice": float(dice.detach())}
