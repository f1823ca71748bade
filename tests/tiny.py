"""Tiny untrained backbones for the tests: milliseconds on CPU, no weights."""

from __future__ import annotations

from typing import Any

from monai_sam_adapt.sam import FrozenSAM

__all__ = ["TINY_ARCH", "tiny_backbone"]


#: Tiny architectures for unit tests (milliseconds on CPU, no weights).
TINY_ARCH: dict[str, dict[str, Any]] = {
    "vit_b": dict(
        image_size=64,
        patch_size=16,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        window_size=2,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_depth=1,
    ),
    "lite_medsam": dict(
        embed_dims=(16, 16, 16, 320),
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 2),  # TinyViT: last 320
        decoder_mlp_dim=64,
        decoder_depth=1,
    ),
}
TINY_ARCH["vit_l"] = TINY_ARCH["vit_h"] = TINY_ARCH["vit_b"]


def tiny_backbone(name: str = "vit_b", **kwargs: Any) -> FrozenSAM:
    """An untrained, tiny :class:`FrozenSAM` for tests and smoke runs (``checkpoint=None``)."""
    return FrozenSAM(name, checkpoint=None, **{**TINY_ARCH[name], **kwargs})
