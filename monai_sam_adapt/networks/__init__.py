"""Networks on frozen SAM backbones."""

from .autosam import (
    AutoSAM,
    AutoSAMLoss,
    CNNPromptEncoder,
    EmbeddingHeadPromptEncoder,
    SurrogateDecoder,
    autosam_lite_medsam,
)
from .prompted import PromptedSAM

__all__ = ["AutoSAM", "AutoSAMLoss", "CNNPromptEncoder", "EmbeddingHeadPromptEncoder", "PromptedSAM",
           "SurrogateDecoder", "autosam_lite_medsam"]
