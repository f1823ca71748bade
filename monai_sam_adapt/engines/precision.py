"""Training precision: bfloat16 autocast where the hardware has bf16 arithmetic, fp32 elsewhere.

MONAI's engines take ``amp=True`` as CUDA float16 autocast with a gradient scaler; S-SAM trains through the whole image
encoder on CPUs too, where bf16 autocast (AVX-512 BF16 / AMX) is the fast path and needs no scaler. So the precision
is an inferer: :class:`AutocastInferer` runs the network under ``torch.autocast`` on the input's device and returns
fp32 outputs, so losses and metrics stay in fp32. The bundles' ``precision`` key selects it: ``"fp32"``, ``"bf16"`` or
``"auto"`` (bf16 where supported, fp32 otherwise); unsupported bf16 falls back to fp32 with a warning, never to a slow
emulation.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["PRECISIONS", "AutocastInferer", "bf16_supported", "resolve_precision", "set_cpu_threads"]

PRECISIONS = ("fp32", "bf16", "auto")
logger = logging.getLogger("monai_sam_adapt.precision")


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` has native bf16 arithmetic (CUDA: Ampere or newer; CPU: AVX-512 BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: ``torch.bfloat16``, or ``None`` for plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "fp32":
        return None
    if bf16_supported(device):
        return torch.bfloat16
    level = logging.WARNING if precision == "bf16" else logging.INFO
    logger.log(level, f"precision {precision!r}: {torch.device(device).type} has no bf16 arithmetic, training in fp32.")
    return None


def _to_fp32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float32 else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_fp32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_fp32(v) for k, v in out.items()}
    return out


class AutocastInferer(Inferer):
    """Runs ``inferer`` (default :class:`~monai.inferers.SimpleInferer`) under ``torch.autocast`` at ``precision`` on
    the input's device; floating outputs come back as fp32.

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (see the module docstring). Default ``"auto"``.
        inferer: the inferer to wrap.
        channels_last: run in channels-last memory format: the network's 4D weights are converted once (in place,
            the same parameters) and 4D image batches are handed over in that format (same values; convolutions then
            run their channels-last kernels, faster on CPUs for TinyViT's convolutional stages). Default ``False``.
    """

    def __init__(self, precision: str = "auto", inferer: Inferer | None = None, channels_last: bool = False) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        self.precision, self.inferer, self.channels_last = precision, inferer or SimpleInferer(), bool(channels_last)
        self._dtypes: dict[str, torch.dtype | None] = {}

    def dtype(self, device: torch.device | str) -> torch.dtype | None:
        """The autocast dtype used on ``device`` (resolved and logged once per device type)."""
        kind = torch.device(device).type
        if kind not in self._dtypes:
            self._dtypes[kind] = resolve_precision(self.precision, kind)
            logger.info(f"training precision on {kind}: {self._dtypes[kind] or 'fp32'} (asked: {self.precision!r})")
        return self._dtypes[kind]

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        dtype = self.dtype(inputs.device)
        if self.channels_last and isinstance(network, torch.nn.Module) and not getattr(network, "_channels_last", 0):
            network.to(memory_format=torch.channels_last)
            network._channels_last = True
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(inputs.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = self.inferer(inputs, network, *args, **kwargs)
        return _to_fp32(out)


def _cgroup_cpus() -> float | None:
    """CPUs granted by a cgroup v2 quota (``docker --cpus``), which neither PyTorch nor the affinity mask sees."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else float(quota) / float(period)
    except (OSError, ValueError):
        return None


def set_cpu_threads() -> int:
    """PyTorch's intra-op threads from the machine: its default (one per physical core this process may use), lowered
    to a container's CPU quota when one is set; ``OMP_NUM_THREADS`` wins when given. Returns the count."""
    if not os.environ.get("OMP_NUM_THREADS"):
        quota = _cgroup_cpus()
        if quota is not None and quota < torch.get_num_threads():
            torch.set_num_threads(max(1, int(quota)))
    return torch.get_num_threads()
