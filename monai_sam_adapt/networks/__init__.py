"""Networks on frozen SAM backbones: :class:`PromptedSAM` (box/point prompts), :class:`AutoSAM`, :class:`SSAM` with its
SVD / LoRA adapters and text encoders, and their trainable blocks (:mod:`.blocks`).

Not here: the frozen backbones and their embedding cache (:mod:`monai_sam_adapt.sam`), losses
(:mod:`monai_sam_adapt.losses`), errors (:mod:`monai_sam_adapt.errors`).
"""

from .autosam import AutoSAM, AutoSAMEnsemble, autosam_lite_medsam
from .blocks import ChannelMix, CNNPromptEncoder, EmbeddingHeadPromptEncoder, SurrogateDecoder
from .checkpointing import TrainedPartsCheckpoint
from .prompted import PromptedSAM
from .ssam import METHODS, SSAM
from .svd import LoRAAdapter, SVDAdapter, adapt_encoder, count_parameters, merge_adapters
from .text import (
    CLIPTextEncoder,
    LabelIndexEncoder,
    SentenceTextEncoder,
    TextAffineLayer,
    build_text_encoder,
    resolve_prompt_names,
)

__all__ = [
    "METHODS",
    "SSAM",
    "AutoSAM",
    "AutoSAMEnsemble",
    "CLIPTextEncoder",
    "CNNPromptEncoder",
    "ChannelMix",
    "EmbeddingHeadPromptEncoder",
    "LabelIndexEncoder",
    "LoRAAdapter",
    "PromptedSAM",
    "SVDAdapter",
    "SentenceTextEncoder",
    "SurrogateDecoder",
    "TextAffineLayer",
    "TrainedPartsCheckpoint",
    "adapt_encoder",
    "autosam_lite_medsam",
    "build_text_encoder",
    "count_parameters",
    "merge_adapters",
    "resolve_prompt_names",
]
