"""What MONAI and ignite lack for frozen-SAM workflows."""

from .handlers import MetricPlots
from .utils import check_datalist, load_datalist

__all__ = ["MetricPlots", "check_datalist", "load_datalist"]
