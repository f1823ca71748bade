"""What MONAI and ignite lack for our workflows: handlers that draw evaluation results (:class:`MetricPlots`,
:class:`OverlayGrid`) and per-label metrics (:func:`label_metrics`).

Not here: datalists and their checks (:mod:`monai_sam_adapt.data`), the embedding cache
(:mod:`monai_sam_adapt.sam`), checkpoint resume (MONAI's ``CheckpointLoader``, in the bundles' ``train.json``).
"""

from .handlers import MetricPlots, OverlayGrid
from .metrics import from_engine_channel, label_metrics

__all__ = ["MetricPlots", "OverlayGrid", "from_engine_channel", "label_metrics"]
