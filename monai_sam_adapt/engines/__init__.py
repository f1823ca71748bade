"""What MONAI and ignite lack for frozen-SAM workflows: embedding cache, handlers, datalist checks."""

from .cache import EmbeddingCache
from .handlers import MetricPlots, OverlayGrid
from .utils import LAYOUTS, attach_resume, check_datalist, from_engine_channel, label_metrics, load_datalist

__all__ = [
    "LAYOUTS",
    "EmbeddingCache",
    "MetricPlots",
    "OverlayGrid",
    "attach_resume",
    "check_datalist",
    "from_engine_channel",
    "label_metrics",
    "load_datalist",
]
