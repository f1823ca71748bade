"""monai_sam_adapt: fully automatic medical image segmentation on a frozen Segment Anything Model, the MONAI way."""

__version__ = "0.1.0"

from . import bundle, data, engines, errors, io, losses, networks, runtime, sam, transforms  # noqa: E402  (configs use dotted names)

__all__ = [
    "bundle",
    "data",
    "engines",
    "errors",
    "io",
    "losses",
    "networks",
    "runtime",
    "sam",
    "transforms",
    "__version__",
]
