"""What MONAI and ignite lack for frozen-SAM workflows: embedding cache, handlers, datalist checks."""

from .cache import EmbeddingCache
from .handlers import MetricPlots, OverlayGrid
from .utils import attach_resume, check_datalist, from_engine_channel, load_datalist

__all__ = ["EmbeddingCache", "MetricPlots", "OverlayGrid", "attach_resume", "check_datalist", "from_engine_channel",
           "load_datalist"]
