"""The zero-shot baseline every user compares with: a frozen SAM prompted with boxes and/or points."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..sam.backbones import DEFAULT_BACKBONE, FrozenSAM

__all__ = ["PromptedSAM"]


class PromptedSAM(nn.Module):
    """Frozen SAM prompted per image with boxes and/or points; mask logits at the encoder input size.

    Inputs are images already pre-processed for the backbone (:class:`~monai_sam_adapt.transforms.SAMPreprocessd`),
    prompts in the same pixel coordinates; ``Invertd`` maps the logits back to each image's own grid.

    Args:
        backbone: a :class:`FrozenSAM` or a registry name. Default ``"lite_medsam"``.
        checkpoint: when ``backbone`` is a name, its checkpoint (``"default"``, a path or ``None``).
            Default ``"default"``.
        multimask_output: return SAM's best-of-three mask (by predicted IoU) instead of its single-mask output.
            Default ``False``.
        backbone_kwargs: architecture overrides when ``backbone`` is a name (tiny test models).

    Example::

        net = PromptedSAM("lite_medsam")
        logits = net(images, boxes=torch.tensor([[[30., 40., 200., 180.]]]))   # (1, 1, 256, 256)

    Paper: https://arxiv.org/abs/2304.02643 (SAM), https://arxiv.org/abs/2304.12306 (MedSAM, box prompts).
    """

    def __init__(
        self,
        backbone: FrozenSAM | str = DEFAULT_BACKBONE,
        checkpoint: Any = "default",
        multimask_output: bool = False,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        self.sam = backbone if isinstance(backbone, FrozenSAM) else FrozenSAM(backbone, checkpoint, **backbone_kwargs)
        self.multimask_output = multimask_output

    #: One static graph from image and prompts to logits per prompt count (for the runtimes).
    exportable = True

    def forward(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``image (B, 3, S, S)``; ``boxes (B, N, 4)``; ``points (B, N, P, 2)`` with ``point_labels (B, N, P)``.

        Returns logits ``(B, N, S, S)``, one channel per prompt (per class when each class has its box).
        """
        if boxes is None and points is None:
            raise ValueError("PromptedSAM needs boxes or points for every image.")
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            emb = self.sam.encode(image)
            logits, iou = self.sam.decode(
                emb,
                boxes=None if boxes is None else boxes.float(),
                points=None if points is None else points.float(),
                point_labels=point_labels,
                multimask_output=self.multimask_output,
            )
        if self.multimask_output:  # (B, N, 3, h, w): keep the mask SAM scores best
            best = iou.argmax(-1)
            logits = torch.gather(logits, 2, best[..., None, None, None].expand(-1, -1, 1, *logits.shape[-2:]))
        return self.sam.upscale(logits[:, :, 0])
