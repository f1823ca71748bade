"""Networks on frozen SAM backbones."""

from .prompted import PromptedSAM

__all__ = ["PromptedSAM"]
