"""What MONAI and ignite lack for frozen-SAM workflows."""

from .handlers import MetricPlots, OverlayGrid
from .utils import check_datalist, load_datalist

__all__ = ["MetricPlots", "OverlayGrid", "check_datalist", "load_datalist"]
