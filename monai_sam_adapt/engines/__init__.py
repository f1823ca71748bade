"""What MONAI and ignite lack for our workflows: handlers that draw evaluation results (:class:`MetricPlots`,
:class:`OverlayGrid`) and count the cases behind each mean (:class:`EvaluationSummary`), per-label metrics
(:func:`label_metrics`) and crash-safe, exactly resumable training (:class:`AtomicCheckpointSaver`,
:class:`CheckedCheckpointLoader`, :class:`EpochSeed`).

Not here: datalists and their checks (:mod:`monai_sam_adapt.data`), the embedding cache
(:mod:`monai_sam_adapt.sam`), loading trained weights for inference (the networks' own ``load_state_dict``).
"""

from .checkpoints import AtomicCheckpointSaver, CheckedCheckpointLoader, EpochSeed
from .handlers import EvaluationSummary, MetricPlots, OverlayGrid
from .metrics import from_engine_channel, label_metrics

__all__ = [
    "AtomicCheckpointSaver",
    "CheckedCheckpointLoader",
    "EpochSeed",
    "EvaluationSummary",
    "MetricPlots",
    "OverlayGrid",
    "from_engine_channel",
    "label_metrics",
]
