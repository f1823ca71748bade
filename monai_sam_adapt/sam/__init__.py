"""Frozen SAM backbones: one registry (:data:`BACKBONES`), one class (:class:`FrozenSAM`)."""

from .backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    TINY_ARCH,
    BackboneSpec,
    CheckpointError,
    FrozenSAM,
    build_backbone,
    file_sha256,
    get_spec,
    lite_medsam_checkpoint,
    load_state_dict_file,
    resample_positional,
    tiny_backbone,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "TINY_ARCH",
    "BackboneSpec",
    "CheckpointError",
    "FrozenSAM",
    "build_backbone",
    "file_sha256",
    "get_spec",
    "lite_medsam_checkpoint",
    "resample_positional",
    "load_state_dict_file",
    "tiny_backbone",
]
