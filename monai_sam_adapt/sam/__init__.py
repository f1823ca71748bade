"""Frozen SAM backbones: one registry (:data:`BACKBONES`), one class (:class:`FrozenSAM`), their checkpoint files
(:mod:`.checkpoint`: hashing, safe loading) and the cache of their image embeddings (:class:`EmbeddingCache`).

Not here: networks built on a backbone (:mod:`monai_sam_adapt.networks`), pre-processing transforms
(:mod:`monai_sam_adapt.transforms`), tiny test backbones (``tests/tiny.py``).
"""

from .backbones import BACKBONES, DEFAULT_BACKBONE, BackboneSpec, FrozenSAM, get_spec
from .cache import EmbeddingCache
from .checkpoint import (
    file_md5,
    file_sha256,
    lite_medsam_checkpoint,
    load_state_dict_file,
    read_checkpoint,
    resample_positional,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "EmbeddingCache",
    "FrozenSAM",
    "file_md5",
    "file_sha256",
    "get_spec",
    "lite_medsam_checkpoint",
    "load_state_dict_file",
    "read_checkpoint",
    "resample_positional",
]
