"""AutoSAM: an image-conditioned prompt encoder g(I) drives a frozen SAM mask decoder; a surrogate decoder h reads g(I).

Shaharabany et al., "AutoSAM: Adapting SAM to Medical Images by Overloading the Prompt Encoder",
https://arxiv.org/abs/2306.06370.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..sam.backbones import DEFAULT_BACKBONE, FrozenSAM
from ..sam.cache import EmbeddingCache
from .blocks import (
    EFFICIENTNET_LITE_WEIGHTS,
    CNNPromptEncoder,
    EfficientNetPromptEncoder,
    EmbeddingHeadPromptEncoder,
    SurrogateDecoder,
)
from .checkpointing import TrainedPartsCheckpoint

__all__ = ["CASCADES", "OUTPUTS", "PROMPT_ENCODERS", "AutoSAM", "AutoSAMEnsemble", "autosam_lite_medsam"]

OUTPUTS = ("sam", "h", "both")
PROMPT_ENCODERS = ("head", "cnn", "efficientnet", "efficientnet-lite1", "efficientnet-lite2")
CASCADES = (False, "box", "components")


class AutoSAM(TrainedPartsCheckpoint, nn.Module):
    """AutoSAM on any frozen backbone of the registry: g(I) replaces SAM's prompt encoder, SAM stays frozen.

    g produces one dense prompt embedding per class (``embed_dim x embedding grid``), fed to the frozen mask decoder
    with no sparse prompt; gradients reach g through the frozen decoder. The surrogate decoder h maps g(I) to a mask on
    its own and is trained beside g on a detached copy of g(I), so h never changes g.

    Args:
        backbone: a :class:`FrozenSAM` or a registry name. Default ``"lite_medsam"``.
        checkpoint: the backbone checkpoint when ``backbone`` is a name. Default ``"default"``.
        num_classes: classes (one dense prompt and one decoder pass each, batched). Default 1.
        prompt_encoder: ``"head"`` (light head over the frozen SAM embedding), ``"cnn"`` (CNN encoder-decoder over the
            image, from scratch), ``"efficientnet"`` (ImageNet EfficientNet-Lite0 + feature pyramid, fused with the
            SAM embedding: :class:`~monai_sam_adapt.networks.blocks.EfficientNetPromptEncoder`), or
            ``"efficientnet-lite1"`` / ``"efficientnet-lite2"`` (the same on the deeper ImageNet Lite1 / Lite2, each
            from its own wheel). Default ``"head"``.
        prompt_encoder_kwargs: passed to the prompt encoder class. Default ``None``.
        surrogate: build h. Default ``True``.
        output: what ``forward`` returns: ``"sam"`` (decoder logits), ``"h"`` (surrogate logits) or ``"both"``
            (concatenated on channels, SAM first: what :class:`monai_sam_adapt.losses.AutoSAMLoss` trains on).
            Default ``"sam"``.
        cache: an :class:`EmbeddingCache`; ``True`` for an in-memory one; a folder path for one on disk (both keyed by
            this backbone's fingerprint); or ``None``. Default ``None``.
        cascade: at inference (``eval()``), run the frozen decoder once more with the box around each class's
            automatic mask as a prompt (AutoSAM's dense prompt kept): ``False``, ``"box"`` (one box around the whole
            mask) or ``"components"`` (a box per connected component, the masks united). Default ``False``.
        input_side: side of the (square, pre-processed) images this model is given, an integer multiple of the
            backbone's input side ``S``: g reads them at this size, the frozen encoder (and the cache) reads them
            average-pooled down to ``S``, and the logits come back at this size. A larger side lets g see small
            structures that the encoder's ``S`` loses (the bundles' ``image_size`` feeds ``SAMPreprocessd`` and this).
            Default ``None``: the backbone's ``S``.
        backbone_kwargs: architecture overrides of the backbone (tiny test models).

    Example::

        net = AutoSAM("lite_medsam", num_classes=1, prompt_encoder="head", cache=True)
        logits = net(images)        # (B, 1, 256, 256) at the encoder input size; no prompt needed

    Paper: https://arxiv.org/abs/2306.06370 (the reference g is a HarDNet-85, 41.6 M parameters).
    """

    fingerprint_keys = (
        "backbone",
        "sha256",
        "arch",
        "num_classes",
        "prompt_encoder",
        "g_pretrained_sha256",
        "input_side",
    )
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
        cascade: bool | str = False,
        input_side: int | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if prompt_encoder not in PROMPT_ENCODERS:
            raise ValueError(f"prompt_encoder must be one of {PROMPT_ENCODERS}, got {prompt_encoder!r}.")
        if cascade is None or str(cascade).lower() in ("false", "none", "off", ""):  # a command line's "false"
            cascade = False
        if cascade not in CASCADES:
            raise ValueError(f"cascade must be one of {CASCADES}, got {cascade!r}.")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}.")
        if output in ("h", "both") and not surrogate:
            raise ValueError(f"output={output!r} needs surrogate=True.")
        self.sam = backbone if isinstance(backbone, FrozenSAM) else FrozenSAM(backbone, checkpoint, **backbone_kwargs)
        self.num_classes, self.output = num_classes, output
        side = self.sam.image_size
        self.image_size = int(input_side or side)
        if self.image_size % side:
            raise ValueError(f"input_side must be a multiple of {self.sam.name}'s input side {side}, got {input_side}.")
        dim = self.sam.embed_dim
        kw = dict(prompt_encoder_kwargs or {})
        self.prompt_encoder_name, self.cascade = prompt_encoder, cascade
        if prompt_encoder == "head":
            self.image_prompt_encoder = EmbeddingHeadPromptEncoder(dim, num_classes, **kw)
        elif prompt_encoder.startswith("efficientnet"):  # "efficientnet" is Lite0, as committed models name it
            kw.setdefault("image_size", self.image_size)
            kw.setdefault("variant", prompt_encoder.partition("-")[2] or "lite0")
            self._g_weights = kw.get("weights", "imagenet")
            self.image_prompt_encoder = EfficientNetPromptEncoder(dim, num_classes, **kw)
        else:
            kw.setdefault("downsample", self.image_size // self.sam.embedding_size[0])
            self.image_prompt_encoder = CNNPromptEncoder(dim, num_classes, **kw)
        # start from SAM's own "no mask" dense embedding: g's output layer is zero and its bias is that embedding
        out = self.image_prompt_encoder.out
        nn.init.zeros_(out.weight)
        with torch.no_grad():
            out.bias.copy_(self.sam.prompt_encoder.no_mask_embed.weight[0].repeat(num_classes))
        self.surrogate_decoder = SurrogateDecoder(dim) if surrogate else None
        self.cache = _embedding_cache(cache, self.sam)

    # ------------------------------------------------------------------ checkpoints hold g and h only
    def checkpoint_fingerprint(self) -> dict:
        out = {"method": "AutoSAM", "num_classes": self.num_classes, **self.sam.fingerprint}
        if self.prompt_encoder_name.startswith("efficientnet"):  # g starts from ImageNet weights: name them too
            out["prompt_encoder"] = f"efficientnet-{self.image_prompt_encoder.variant}"
            out["g_pretrained_sha256"] = self._g_weights_sha256
        if self.image_size != self.sam.image_size:  # models trained at the backbone's own side keep theirs
            out["input_side"] = self.image_size
        return out

    @property
    def _g_weights_sha256(self) -> str | None:
        from ..sam.checkpoint import file_sha256

        weights = getattr(self, "_g_weights", None)
        if weights is None:
            return None
        if str(weights) == "imagenet":
            return EFFICIENTNET_LITE_WEIGHTS[self.image_prompt_encoder.variant][3]
        return file_sha256(weights)

    @property
    def exportable(self) -> bool:
        """One static graph from image to logits (for :func:`~monai_sam_adapt.runtime.use_runtime`): not with the
        cascade (its boxes depend on the first masks) or an embedding cache."""
        return not self.cascade and self.cache is None

    # ------------------------------------------------------------------ forward
    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's embedding of ``image`` (at this model's ``image_size``; pooled to the encoder's)."""
        return _frozen_embedding(self.sam, self.cache, image)

    def dense_prompts(self, image: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """g(I): ``(B, K, C, h, w)``."""
        dense = self.image_prompt_encoder(image, embedding)
        b, _, h, w = dense.shape
        return dense.reshape(b, self.num_classes, self.sam.embed_dim, h, w)

    def forward(self, image: torch.Tensor, g_image: torch.Tensor | None = None) -> torch.Tensor:
        """``image (B, 3, S, S)`` pre-processed for the backbone (``S``: ``image_size``) -> logits ``(B, K, S, S)``
        (``(B, 2K, S, S)`` for ``output="both"``).

        ``g_image``: what g sees instead of ``image`` (training: a photometrically augmented copy on the same pixel
        grid, while the frozen encoder, and its cache, see the clean image). Default ``image``."""
        if image.ndim != 4 or tuple(image.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"AutoSAM(input_side={self.image_size}) expects images (B, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(image.shape)}: pre-process them with SAMPreprocessd(image_size={self.image_size})."
            )
        return self.decode(image if g_image is None else g_image, self.embed(image))

    def decode(self, g_image: torch.Tensor, embedding: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Logits ``(B, K or 2K, size, size)`` from what g reads (at ``image_size``) and the frozen encoder's
        ``embedding`` of the same image (default ``size``: ``image_size``)."""
        size = size or self.image_size
        dense = self.dense_prompts(g_image, embedding)
        outs = []
        if self.output in ("sam", "both"):
            low, _ = self.sam.decode(embedding, dense=dense)
            low = low[:, :, 0]
            if self.cascade and not self.training:
                low = self.refine(embedding, dense, low)
            outs.append(self.sam.upscale(low, size))
        if self.output in ("h", "both"):
            d = dense.detach() if self.output == "both" else dense  # h learns beside g, never through it
            b, k = d.shape[:2]
            low_h = self.surrogate_decoder(d.flatten(0, 1)).reshape(b, k, 4 * d.shape[-2], 4 * d.shape[-1])
            outs.append(self.sam.upscale(low_h, size))
        return torch.cat(outs, 1)

    def refine(self, embedding: torch.Tensor, dense: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """The self-prompt cascade: low-resolution logits ``(B, K, h, w)`` -> the frozen decoder's logits with the box
        of each class's mask (or of each of its connected components) as a prompt. A class with an empty mask keeps
        its first logits."""
        from monai.transforms.utils import generate_spatial_bounding_box

        masks = self.sam.upscale(low) > 0  # (B, K, S, S) on the encoder's input grid, where boxes live
        out = low.clone()
        for b in range(low.shape[0]):
            for k in range(low.shape[1]):
                m = masks[b, k]
                if not bool(m.any()):
                    continue
                parts = _components(m) if self.cascade == "components" else [m]
                boxes = []
                for part in parts:
                    (r0, c0), (r1, c1) = generate_spatial_bounding_box(part[None].cpu())
                    boxes.append([float(c0), float(r0), float(c1 - 1), float(r1 - 1)])  # SAM: x = column
                box = torch.tensor([boxes], dtype=embedding.dtype, device=embedding.device)  # (1, n, 4)
                d = dense[b : b + 1, k : k + 1].expand(-1, len(boxes), -1, -1, -1)
                again, _ = self.sam.decode(embedding[b : b + 1], boxes=box, dense=d)
                out[b, k] = again[0, :, 0].amax(0)  # the components' masks united
        return out


class AutoSAMEnsemble(TrainedPartsCheckpoint, nn.Module):
    """Separately trained :class:`AutoSAM` models on one frozen backbone, their probabilities averaged: an ensemble
    over g's input side (a 256 px and a 512 px g) and/or g's architecture.

    The frozen image encoder, the expensive part, runs once per image: each member alone feeds its encoder the image
    average-pooled to the backbone's side, which is the same tensor for every member, so one embedding (and one cache
    entry) serves them all. Each member's g reads the image average-pooled to its own ``input_side``; its logits are
    upsampled from the decoder grid straight to this model's side and turned into probabilities; the mean probability
    comes back as logits (thresholding them at 0 is the mean at 0.5). With ``output="both"`` the SAM and h halves are
    averaged separately. The members are trained one by one (the bundles' ``train.json``), then put together with
    :meth:`load_members`; the ensemble's ``state_dict`` holds them all in one file.

    Args:
        members: one dict of :class:`AutoSAM` arguments per member (``prompt_encoder``, ``input_side``,
            ``prompt_encoder_kwargs``, ``surrogate``), e.g. ``[{"prompt_encoder": "efficientnet"},
            {"prompt_encoder": "efficientnet", "input_side": 512}]``.
        backbone, checkpoint, num_classes, output, cache, cascade, backbone_kwargs: as :class:`AutoSAM`, shared by
            the members (``cascade`` runs in each member).
        input_side: the side of the (square, pre-processed) images given; a multiple of every member's
            ``input_side``. Default ``None``: the largest of them.

    Example::

        g = {"prompt_encoder": "efficientnet"}
        net = AutoSAMEnsemble([g, {**g, "input_side": 512}])
        net.load_members(["g256/model.pt", "g512/model.pt"]).save("ensemble.pt")  # each member's file checked
        logits = net(images_512)                              # (B, 1, 512, 512)
    """

    fingerprint_keys = ("backbone", "sha256", "arch", "num_classes", "members")

    def __init__(
        self,
        members: Sequence[Mapping[str, Any]],
        backbone: FrozenSAM | str = DEFAULT_BACKBONE,
        checkpoint: Any = "default",
        num_classes: int = 1,
        output: str = "sam",
        cache: EmbeddingCache | bool | str | os.PathLike | None = None,
        cascade: bool | str = False,
        input_side: int | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("AutoSAMEnsemble needs at least one member.")
        shared = {"backbone", "checkpoint", "num_classes", "output", "cache", "cascade"}
        for spec in members:
            if not isinstance(spec, Mapping) or shared & set(spec):
                raise ValueError(
                    f"each member is a dict of its own AutoSAM arguments (not {sorted(shared)}, which the members "
                    f"share), got {spec!r}."
                )
        self.sam = backbone if isinstance(backbone, FrozenSAM) else FrozenSAM(backbone, checkpoint, **backbone_kwargs)
        self.num_classes = num_classes
        common = {"num_classes": num_classes, "output": output, "cascade": cascade}
        self.members = nn.ModuleList(AutoSAM(self.sam, **common, **dict(spec)) for spec in members)
        sides = [m.image_size for m in self.members]
        self.image_size = int(input_side or max(sides))
        bad = [s for s in sides if self.image_size % s]
        if bad:
            raise ValueError(f"input_side {self.image_size} must be a multiple of every member's side, not of {bad}.")
        self.cache = _embedding_cache(cache, self.sam)

    def checkpoint_fingerprint(self) -> dict:
        names = [f"{m.prompt_encoder_name}@{m.image_size}" for m in self.members]
        return {"method": "AutoSAMEnsemble", "num_classes": self.num_classes, "members": names, **self.sam.fingerprint}

    def load_members(self, paths: Sequence[str | os.PathLike]) -> AutoSAMEnsemble:
        """Load each member's own AutoSAM weights file (as its bundle saves them); a file that does not fit its member
        (another backbone, g or input side) raises :class:`CheckpointError` naming the file. Returns ``self``."""
        from ..errors import CheckpointError
        from ..sam.checkpoint import read_checkpoint

        if len(paths) != len(self.members):
            raise ValueError(f"{len(self.members)} members, {len(paths)} weight files: {list(map(str, paths))}.")
        for i, (member, path) in enumerate(zip(self.members, paths)):
            state = read_checkpoint(path, f"member {i}")
            if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):  # a training checkpoint
                state = state["model"]
            try:
                member.load_state_dict(state)
            except (CheckpointError, RuntimeError) as e:
                raise CheckpointError(f"member {i} ({str(path)!r}): {e}") from None
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write this ensemble's weights (every member's g and h, no frozen weights) to ``path`` in one atomic write
        (a bundle's ``model_path``); returns the path."""
        from ..io import atomic_write

        with atomic_write(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return Path(path)

    @property
    def exportable(self) -> bool:
        """As :attr:`AutoSAM.exportable`, for every member."""
        return self.cache is None and all(m.exportable for m in self.members)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image (B, 3, N, N)`` (``N``: ``image_size``) -> logits of the members' mean probability
        ``(B, K, N, N)`` (``(B, 2K, N, N)`` for ``output="both"``)."""
        n = self.image_size
        if image.ndim != 4 or tuple(image.shape[-2:]) != (n, n):
            raise ValueError(
                f"AutoSAMEnsemble(input_side={n}) expects images (B, 3, {n}, {n}), got {tuple(image.shape)}: "
                f"pre-process them with SAMPreprocessd(image_size={n})."
            )
        embedding = _frozen_embedding(self.sam, self.cache, image)
        probs = 0
        for m in self.members:
            probs = probs + torch.sigmoid(m.decode(_pooled(image, m.image_size), embedding, size=n).float())
        return torch.logit(probs / len(self.members), eps=1e-6)


def _pooled(image: torch.Tensor, side: int) -> torch.Tensor:
    """``image (B, C, N, N)`` 2 x 2 (... k x k) average-pooled to ``side`` (``N`` a multiple of it): exact and
    deterministic, so each augmented variant keeps fixed bytes and its cache key holds."""
    n = image.shape[-1]
    return F.avg_pool2d(image, n // side) if n > side else image


def _frozen_embedding(sam: FrozenSAM, cache: EmbeddingCache | None, image: torch.Tensor) -> torch.Tensor:
    """The frozen encoder's embedding of ``image`` pooled to the encoder's side, through ``cache`` when there is one."""
    image = _pooled(image, sam.image_size)
    if cache is not None:
        return cache(image, sam.encode)
    with torch.no_grad():
        return sam.encode(image)


def _embedding_cache(cache: EmbeddingCache | bool | str | os.PathLike | None, sam: FrozenSAM) -> EmbeddingCache | None:
    """``True``: an in-memory cache; a folder: one on disk (keyed by ``sam``'s fingerprint); ``None``: none."""
    if cache is True or isinstance(cache, (str, os.PathLike)):
        cache = EmbeddingCache(None if cache is True else cache, fingerprint=sam.fingerprint)
    return None if cache is None or cache is False else cache


def _components(mask: torch.Tensor) -> list[torch.Tensor]:
    """Connected components (8-connected) of a 2D boolean mask, largest first."""
    from scipy import ndimage

    labels, n = ndimage.label(mask.cpu().numpy(), structure=np.ones((3, 3)))
    parts = [torch.from_numpy(labels == i) for i in range(1, n + 1)]
    return sorted(parts, key=lambda p: -int(p.sum()))


def autosam_lite_medsam(
    num_classes: int = 1, prompt_encoder: str = "head", checkpoint: Any = "default", **kwargs: Any
) -> AutoSAM:
    """AutoSAM on the frozen LiteMedSAM backbone (the configuration of our bundles)."""
    return AutoSAM(
        "lite_medsam", checkpoint=checkpoint, num_classes=num_classes, prompt_encoder=prompt_encoder, **kwargs
    )
