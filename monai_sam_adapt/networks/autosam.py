"""AutoSAM: an image-conditioned prompt encoder g(I) drives a frozen SAM mask decoder; a surrogate decoder h reads g(I).

Shaharabany et al., "AutoSAM: Adapting SAM to Medical Images by Overloading the Prompt Encoder",
https://arxiv.org/abs/2306.06370.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from monai.losses import DiceLoss
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch import nn

from ..engines.cache import EmbeddingCache
from ..sam.backbones import DEFAULT_BACKBONE, FrozenSAM
from .checkpointing import TrainedPartsCheckpoint

__all__ = [
    "AutoSAM",
    "AutoSAMLoss",
    "CNNPromptEncoder",
    "EmbeddingHeadPromptEncoder",
    "SurrogateDecoder",
    "autosam_lite_medsam",
]

OUTPUTS = ("sam", "h", "both")


class EmbeddingHeadPromptEncoder(nn.Module):
    """g as a light convolutional head over the frozen SAM image embedding (no second image encoder).

    Args:
        embed_dim: channels of the SAM embedding and of each dense prompt.
        num_classes: dense prompts produced (one per class).
        hidden_channels: width of the head. Default 128.
        num_layers: 3x3 convolution blocks before the output. Default 2.
    """

    needs_embedding = True

    def __init__(self, embed_dim: int, num_classes: int = 1, hidden_channels: int = 128, num_layers: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        layers: list[nn.Module] = []
        ch = embed_dim
        for _ in range(num_layers):
            layers.append(
                Convolution(2, ch, hidden_channels, kernel_size=3, act="GELU", norm=("group", {"num_groups": 8}))
            )
            ch = hidden_channels
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(ch, embed_dim * num_classes, kernel_size=1)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(embedding))


class CNNPromptEncoder(nn.Module):
    """g as a CNN encoder-decoder over the image (MONAI blocks): a strided stem down to the embedding grid, then a
    MONAI ``UNet`` at that grid.

    Args:
        embed_dim: channels of each dense prompt.
        num_classes: dense prompts produced (one per class).
        downsample: image size / embedding size (4 for LiteMedSAM 256 -> 64, 16 for SAM 1024 -> 64). Default 4.
        channels: UNet channels. Default ``(32, 64, 128)``.
        weights: optional local ``.pth``/``.safetensors`` file with this module's weights. Default ``None``.
    """

    needs_embedding = False

    def __init__(
        self,
        embed_dim: int,
        num_classes: int = 1,
        downsample: int = 4,
        channels: tuple[int, ...] = (32, 64, 128),
        weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        n_down = int(downsample).bit_length() - 1
        if 2**n_down != downsample:
            raise ValueError(f"downsample must be a power of 2, got {downsample}.")
        stem, ch = [], 3
        for i in range(n_down):
            out_ch = channels[0] if i == n_down - 1 else max(16, channels[0] // 2)
            stem.append(
                Convolution(2, ch, out_ch, strides=2, kernel_size=3, act="GELU", norm=("group", {"num_groups": 8}))
            )
            ch = out_ch
        self.stem = nn.Sequential(*stem)
        self.unet = UNet(
            spatial_dims=2,
            in_channels=ch,
            out_channels=channels[0],
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=1,
            norm=("group", {"num_groups": 8}),
            act="GELU",
        )
        self.out = nn.Conv2d(channels[0], embed_dim * num_classes, kernel_size=1)
        if weights is not None:
            from ..sam.backbones import load_state_dict_file

            self.load_state_dict(load_state_dict_file(weights))

    def forward(self, image: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.unet(self.stem(image)))


class SurrogateDecoder(nn.Module):
    """h: a shallow deconvolution network mapping one class's dense prompt ``(C, h, w)`` to mask logits ``(4h, 4w)``.

    Args:
        embed_dim: channels of the dense prompt.
        hidden_channels: channels after the first deconvolution (the second has half). Default 64.
    """

    def __init__(self, embed_dim: int, hidden_channels: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, hidden_channels, 2, stride=2),
            nn.GroupNorm(8, hidden_channels),
            nn.GELU(),
            nn.ConvTranspose2d(hidden_channels, hidden_channels // 2, 2, stride=2),
            nn.GELU(),
            nn.Conv2d(hidden_channels // 2, 1, 1),
        )

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.net(dense)


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
            (concatenated on channels, SAM first: what :class:`AutoSAMLoss` trains on). Default ``"sam"``.
        cache: an :class:`EmbeddingCache`; ``True`` for an in-memory one; a folder path for one on disk (both keyed by
            this backbone's identity); or ``None``. Default ``None``.
        backbone_kwargs: architecture overrides of the backbone (tiny test models).

    Example::

        net = AutoSAM("lite_medsam", num_classes=1, prompt_encoder="head", cache=True)
        logits = net(images)        # (B, 1, 256, 256) at the encoder input size; no prompt needed

    Paper: https://arxiv.org/abs/2306.06370 (the reference g is a HarDNet-85, 41.6 M parameters).
    """

    identity_keys = ("backbone", "sha256", "arch", "num_classes")

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
            self.g = EmbeddingHeadPromptEncoder(dim, num_classes, **kw)
        else:
            kw.setdefault("downsample", self.sam.image_size // self.sam.embedding_size[0])
            self.g = CNNPromptEncoder(dim, num_classes, **kw)
        # start from SAM's own "no mask" dense embedding: g's output layer is zero and its bias is that embedding
        out = self.g.out
        nn.init.zeros_(out.weight)
        with torch.no_grad():
            out.bias.copy_(self.sam.prompt_encoder.no_mask_embed.weight[0].repeat(num_classes))
        self.h = SurrogateDecoder(dim) if surrogate else None
        if cache is True or isinstance(cache, (str, os.PathLike)):
            cache = EmbeddingCache(None if cache is True else cache, identity=self.sam.identity)
        self.cache = None if cache is None or cache is False else cache

    # ------------------------------------------------------------------ checkpoints hold g and h only
    def checkpoint_identity(self) -> dict:
        return {"method": "AutoSAM", "num_classes": self.num_classes, **self.sam.identity}

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
        dense = self.g(image, embedding)
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
            low_h = self.h(d.flatten(0, 1)).reshape(b, k, 4 * d.shape[-2], 4 * d.shape[-1])
            outs.append(self.sam.upscale(low_h))
        return torch.cat(outs, 1)


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


def autosam_lite_medsam(
    num_classes: int = 1, prompt_encoder: str = "head", checkpoint: Any = "default", **kwargs: Any
) -> AutoSAM:
    """AutoSAM on the frozen LiteMedSAM backbone (the configuration of our bundles)."""
    return AutoSAM(
        "lite_medsam", checkpoint=checkpoint, num_classes=num_classes, prompt_encoder=prompt_encoder, **kwargs
    )
