"""Trainable building blocks that sit on a frozen SAM: AutoSAM's image-conditioned prompt encoders (the paper's g),
its surrogate decoder (h), and S-SAM's Text Affine Layer is in :mod:`.text` beside the text encoders it follows."""

from __future__ import annotations

import os

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch import nn

__all__ = ["CNNPromptEncoder", "EmbeddingHeadPromptEncoder", "SurrogateDecoder"]


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
            from ..sam.checkpoint import load_state_dict_file

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
