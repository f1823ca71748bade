"""AutoSAM: an image-conditioned prompt encoder g(I) drives a frozen SAM mask decoder; a surrogate decoder h reads g(I).

Shaharabany et al., "AutoSAM: Adapting SAM to Medical Images by Overloading the Prompt Encoder",
https://arxiv.org/abs/2306.06370.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..sam.backbones import DEFAULT_BACKBONE, FrozenSAM
from ..sam.cache import EmbeddingCache
from .blocks import CNNPromptEncoder, EmbeddingHeadPromptEncoder, SurrogateDecoder
from .checkpointing import TrainedPartsCheckpoint

__all__ = ["OUTPUTS", "AutoSAM", "autosam_lite_medsam"]

OUTPUTS = ("sam", "h", "both")


class AutoSAM(TrainedPartsCheckpoint, nn.Module):
    """AutoSAM on any frozen backbone of the registry: g(I) replaces SAM's prompt encoder, SAM stays frozen.

    g produces one dense prompt embedding per class (``embed_dim x embedding grid``), fed to the frozen mask decoder
    with no sparse prompt; gradients reach g through the frozen decoder. The surrogate decoder h maps g(I) to a mask on
    its own and is trained beside g on a detached copy of g(I), so h never changes g.

    Args:
        backbone: a :class:`FrozenSAM` or a registry name. Default ``"lite_medsam"``.
        checkpoint: the backbone checkpoint when ``backbone`` is a name. Default ``"default"``.
        num_classes: classes (one dense prompt and one decoder pass each, batched). Default 1.
        prompt_encoder: ``"head"`` (light head over the frozen SAM embedding) or ``"cnn"`` (CNN encoder-decoder over the
            image). Default ``"head"``.
        prompt_encoder_kwargs: passed to the prompt encoder class. Default ``None``.
        surrogate: build h. Default ``True``.
        output: what ``forward`` returns: ``"sam"`` (decoder logits), ``"h"`` (surrogate logits) or ``"both"``
            (concatenated on channels, SAM first: what :class:`monai_sam_adapt.losses.AutoSAMLoss` trains on).
            Default ``"sam"``.
        cache: an :class:`EmbeddingCache`; ``True`` for an in-memory one; a folder path for one on disk (both keyed by
            this backbone's fingerprint); or ``None``. Default ``None``.
        backbone_kwargs: architecture overrides of the backbone (tiny test models).

    Example::

        net = AutoSAM("lite_medsam", num_classes=1, prompt_encoder="head", cache=True)
        logits = net(images)        # (B, 1, 256, 256) at the encoder input size; no prompt needed

    Paper: https://arxiv.org/abs/2306.06370 (the reference g is a HarDNet-85, 41.6 M parameters).
    """

    fingerprint_keys = ("backbone", "sha256", "arch", "num_classes")
    legacy_prefixes = {"g.": "image_prompt_encoder.", "h.": "surrogate_decoder."}  # names before 0.2

    def __init__(
        self,
        backbone: FrozenSAM | str = DEFAULT_BACKBONE,
        checkpoint: Any = "default",
        num_classes: int = 1,
        prompt_encoder: str = "head",
        prompt_encoder_kwargs: dict | None = None,
        surrogate: bool = True,
        output: str = "sam",
        cache: EmbeddingCache | bool | str | os.PathLike | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if prompt_encoder not in ("head", "cnn"):
            raise ValueError(f"prompt_encoder must be 'head' or 'cnn', got {prompt_encoder!r}.")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
        if output in ("h", "both") and not surrogate:
            raise ValueError(f"output={output!r} needs surrogate=True.")
        self.sam = backbone if isinstance(backbone, FrozenSAM) else FrozenSAM(backbone, checkpoint, **backbone_kwargs)
        self.num_classes, self.output = num_classes, output
        dim = self.sam.embed_dim
        kw = dict(prompt_encoder_kwargs or {})
        if prompt_encoder == "head":
            self.image_prompt_encoder = EmbeddingHeadPromptEncoder(dim, num_classes, **kw)
        else:
            kw.setdefault("downsample", self.sam.image_size // self.sam.embedding_size[0])
            self.image_prompt_encoder = CNNPromptEncoder(dim, num_classes, **kw)
        # start from SAM's own "no mask" dense embedding: g's output layer is zero and its bias is that embedding
        out = self.image_prompt_encoder.out
        nn.init.zeros_(out.weight)
        with torch.no_grad():
            out.bias.copy_(self.sam.prompt_encoder.no_mask_embed.weight[0].repeat(num_classes))
        self.surrogate_decoder = SurrogateDecoder(dim) if surrogate else None
        if cache is True or isinstance(cache, (str, os.PathLike)):
            cache = EmbeddingCache(None if cache is True else cache, fingerprint=self.sam.fingerprint)
        self.cache = None if cache is None or cache is False else cache

    # ------------------------------------------------------------------ checkpoints hold g and h only
    def checkpoint_fingerprint(self) -> dict:
        return {"method": "AutoSAM", "num_classes": self.num_classes, **self.sam.fingerprint}

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ forward
    def embed(self, image: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache(image, self.sam.encode)
        with torch.no_grad():
            return self.sam.encode(image)

    def dense_prompts(self, image: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """g(I): ``(B, K, C, h, w)``."""
        dense = self.image_prompt_encoder(image, embedding)
        b, _, h, w = dense.shape
        return dense.reshape(b, self.num_classes, self.sam.embed_dim, h, w)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image (B, 3, S, S)`` pre-processed for the backbone -> logits ``(B, K, S, S)`` (``(B, 2K, S, S)`` for
        ``output="both"``)."""
        embedding = self.embed(image)
        dense = self.dense_prompts(image, embedding)
        outs = []
        if self.output in ("sam", "both"):
            low, _ = self.sam.decode(embedding, dense=dense)
            outs.append(self.sam.upscale(low[:, :, 0]))
        if self.output in ("h", "both"):
            d = dense.detach() if self.output == "both" else dense  # h learns beside g, never through it
            b, k = d.shape[:2]
            low_h = self.surrogate_decoder(d.flatten(0, 1)).reshape(b, k, 4 * d.shape[-2], 4 * d.shape[-1])
            outs.append(self.sam.upscale(low_h))
        return torch.cat(outs, 1)


def autosam_lite_medsam(
    num_classes: int = 1, prompt_encoder: str = "head", checkpoint: Any = "default", **kwargs: Any
) -> AutoSAM:
    """AutoSAM on the frozen LiteMedSAM backbone (the configuration of our bundles)."""
    return AutoSAM(
        "lite_medsam", checkpoint=checkpoint, num_classes=num_classes, prompt_encoder=prompt_encoder, **kwargs
    )
