"""S-SAM: singular-value tuning of SAM's image encoder, prompted by label names.

Paranjape et al., "S-SAM: SVD-based Fine-Tuning of Segment Anything Model for Medical Image Segmentation",
https://arxiv.org/abs/2408.06447. The same class runs the in-house baselines: LoRA on the same layers (SAMed-style) and
full fine-tuning of the image encoder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..sam.backbones import DEFAULT_BACKBONE, FrozenSAM
from .checkpointing import TrainedPartsCheckpoint
from .svd import adapt_encoder, count_parameters, merge_adapters
from .text import TextAffineLayer, build_text_encoder, check_label_names, validate_label_names

__all__ = ["SSAM", "METHODS"]

METHODS = ("svd", "lora", "full")


class SSAM(TrainedPartsCheckpoint, nn.Module):
    """Text-prompted SAM whose image encoder is adapted by S-SAM's singular-value tuning (or LoRA / full tuning).

    For each label name, a frozen text encoder gives a feature (computed once, kept as a buffer), the trainable
    :class:`TextAffineLayer` turns it into one sparse prompt token, and the frozen mask decoder segments that label
    on the adapted image embedding. ``forward`` returns one logit map per label (one decoder pass per label, batched).

    Args:
        backbone: a registry name or a :class:`FrozenSAM` (it is adapted in place). Default ``"lite_medsam"``.
        checkpoint: the backbone checkpoint when ``backbone`` is a name. Default ``"default"``.
        label_names: the labels, in label-value order (value ``i + 1`` for ``label_names[i]``).
        text_encoder: ``None`` for the offline :class:`LabelIndexEncoder`, a path to a local open_clip checkpoint
            (ViT-B-32), a dict of :class:`CLIPTextEncoder` arguments, or a module. Default ``None``.
        method: ``"svd"`` (S-SAM), ``"lora"`` or ``"full"`` (every image-encoder parameter trains). Default ``"svd"``.
        rank: LoRA rank. Default 4.
        image_size: working input size for SAM ViT backbones (e.g. 256, as S-SAM trains); the positional embedding and
            relative position tables are resampled to it when the checkpoint loads. Default: the backbone's own.
        train_norms / train_pos_embed: also train norm layers and positional embeddings (S-SAM does). Default ``True``.
        backbone_kwargs: architecture overrides (tiny test models).

    Example::

        net = SSAM("lite_medsam", label_names=["gland"])
        logits = net(images)                    # (B, 1, 256, 256)
        net.count_parameters()                  # {'trainable': ..., 'total': ..., 'percent': ...}
    """

    fingerprint_keys = ("backbone", "sha256", "arch", "adaptation", "labels", "text_encoder")
    legacy_prefixes = {"tal.": "text_affine."}  # the name before 0.2

    def __init__(
        self,
        backbone: FrozenSAM | str = DEFAULT_BACKBONE,
        checkpoint: Any = "default",
        label_names: Sequence[str] = ("foreground",),
        text_encoder: nn.Module | dict | str | os.PathLike | None = None,
        method: str = "svd",
        rank: int = 4,
        image_size: int | None = None,
        train_norms: bool = True,
        train_pos_embed: bool = True,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        label_names = validate_label_names(label_names)  # before building anything
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if image_size is not None:
            backbone_kwargs["image_size"] = int(image_size)
        self.sam = backbone if isinstance(backbone, FrozenSAM) else FrozenSAM(backbone, checkpoint, **backbone_kwargs)
        self.method, self.rank = method, rank
        self.label_names = list(label_names)
        encoder = self.sam.image_encoder
        if method == "full":
            encoder.requires_grad_(True)
        else:
            adapt_encoder(encoder, method=method, rank=rank, train_norms=train_norms, train_pos_embed=train_pos_embed)
        text = build_text_encoder(self.label_names, text_encoder)
        self.text_fingerprint = text.fingerprint
        self.register_buffer("text_features", text(self.label_names), persistent=False)
        self.text_affine = TextAffineLayer(self.text_features.shape[1], self.sam.embed_dim)

    def checkpoint_fingerprint(self) -> dict[str, Any]:
        adaptation = {"method": self.method, **({"rank": self.rank} if self.method == "lora" else {})}
        return {
            "method": "SSAM",
            "adaptation": adaptation,
            "labels": self.label_names,
            "text_encoder": self.text_fingerprint,
            **self.sam.fingerprint,
        }

    def train(self, mode: bool = True) -> SSAM:
        """Frozen parts stay in eval (batch-norm statistics never move); modules whose attention biases train follow
        ``mode`` (TinyViT caches its biases in eval mode, which would cut their gradient)."""
        super().train(mode)
        for m in self.sam.image_encoder.modules():
            ab = getattr(m, "attention_biases", None)
            if isinstance(ab, nn.Parameter) and ab.requires_grad:
                m.train(mode)
        return self

    def count_parameters(self) -> dict[str, float]:
        """Trainable parameters (adapters, norms, positional embeddings, Text Affine Layer) against all of SAM."""
        return count_parameters(self, reference=self)

    def merge(self) -> SSAM:
        """Fold the adapters into plain frozen layers for inference (same output, no extra cost); returns ``self``."""
        merge_adapters(self.sam.image_encoder)
        self.requires_grad_(False)
        return self

    def prompts(self, labels: Sequence[str] | None = None) -> torch.Tensor:
        """Sparse prompt tokens ``(K, 1, C)`` for ``labels`` (default: all, in label-value order)."""
        idx = range(len(self.label_names)) if labels is None else check_label_names(labels, self.label_names)
        return self.text_affine(self.text_features[list(idx)])

    def forward(self, image: torch.Tensor, labels: Sequence[str] | None = None) -> torch.Tensor:
        """``image (B, 3, S, S)`` pre-processed for the backbone -> logits ``(B, K, S, S)``, one map per label."""
        embedding = self.sam.encode(image)
        tokens = self.prompts(labels)
        sparse = tokens[None].expand(image.shape[0], -1, -1, -1)
        low, _ = self.sam.decode(embedding, sparse=sparse)
        return self.sam.upscale(low[:, :, 0])
