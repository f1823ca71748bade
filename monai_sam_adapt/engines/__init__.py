"""What MONAI and ignite lack for our workflows: handlers that draw evaluation results (:class:`MetricPlots`,
:class:`OverlayGrid`) and count the cases behind each mean (:class:`EvaluationSummary`), per-label metrics
(:func:`label_metrics`), what a model draws on images with nothing to find (:class:`FalsePositiveImages`),
crash-safe, exactly resumable training (:class:`AtomicCheckpointSaver`, :class:`CheckedCheckpointLoader`,
:class:`EpochSeed`), the training precision (:class:`AutocastInferer`: bf16 autocast on CPUs and GPUs that have it)
and test-time averaging over flips and rotations (:class:`SymmetryInferer`).

Not here: datalists and their checks (:mod:`monai_sam_adapt.data`), the embedding cache
(:mod:`monai_sam_adapt.sam`), loading trained weights for inference (the networks' own ``load_state_dict``).
"""

from .checkpoints import AtomicCheckpointSaver, CheckedCheckpointLoader, EpochSeed
from .handlers import EvaluationSummary, MetricPlots, OverlayGrid
from .metrics import FalsePositiveImages, FalsePositiveMetric, from_engine_channel, label_metrics
from .precision import PRECISIONS, AutocastInferer, bf16_supported, resolve_precision, set_cpu_threads
from .tta import SYMMETRIES, SymmetryInferer

__all__ = [
    "PRECISIONS",
    "SYMMETRIES",
    "AtomicCheckpointSaver",
    "AutocastInferer",
    "CheckedCheckpointLoader",
    "EpochSeed",
    "EvaluationSummary",
    "FalsePositiveImages",
    "FalsePositiveMetric",
    "MetricPlots",
    "OverlayGrid",
    "SymmetryInferer",
    "bf16_supported",
    "from_engine_channel",
    "label_metrics",
    "resolve_precision",
    "set_cpu_threads",
]
