"""monai_sam_adapt: fully automatic medical image segmentation on a frozen Segment Anything Model, the MONAI way."""

__version__ = "0.1.0"

from . import data, engines, io, networks, sam, transforms  # noqa: E402  (bundle configs use dotted names)

__all__ = ["data", "engines", "io", "networks", "sam", "transforms", "__version__"]
