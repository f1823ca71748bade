"""Networks on frozen SAM backbones."""

from .autosam import (
    AutoSAM,
    AutoSAMLoss,
    CNNPromptEncoder,
    EmbeddingHeadPromptEncoder,
    SurrogateDecoder,
    autosam_lite_medsam,
)
from .checkpointing import TrainedPartsCheckpoint
from .prompted import PromptedSAM
from .ssam import METHODS, SSAM
from .svd import LoRAAdapter, SVDAdapter, adapt_encoder, count_parameters, merge_adapters
from .text import CLIPTextEncoder, LabelIndexEncoder, TextAffineLayer, UnknownLabelError, build_text_encoder

__all__ = [
    "METHODS",
    "SSAM",
    "AutoSAM",
    "AutoSAMLoss",
    "CLIPTextEncoder",
    "CNNPromptEncoder",
    "EmbeddingHeadPromptEncoder",
    "LabelIndexEncoder",
    "LoRAAdapter",
    "PromptedSAM",
    "SVDAdapter",
    "SurrogateDecoder",
    "TextAffineLayer",
    "TrainedPartsCheckpoint",
    "UnknownLabelError",
    "adapt_encoder",
    "autosam_lite_medsam",
    "build_text_encoder",
    "count_parameters",
    "merge_adapters",
]
