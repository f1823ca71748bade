"""A bundle under ``bundles/`` served as a MONAI Label automatic segmentation model."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from ignite.handlers import Checkpoint
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ..bundle import bundle_labels, read_config
from ..sam.checkpoint import read_checkpoint
from .errors import RequestError
from .guard import TimeLimitedTask
from .inputs import device_for, input_error, single_output

__all__ = ["BundleSegmentationTask"]

logger = logging.getLogger(__name__)


class BundleSegmentationTask(TimeLimitedTask, InferTask):
    """A bundle under ``bundles/`` as a MONAI Label automatic segmentation model.

    Runs the bundle's own ``configs/inference.json`` (pre-processing, network, inferer, inverse transforms and writer)
    on the one requested image; the network is built and its ``models/model.pt`` loaded (``weights_only``) once, then
    shared by every request. The label comes back on the input's own grid (the bundle's ``Invertd``), with the
    bundle's label values; its names come from ``metadata.json``. A bundle whose dataset keeps channels in separate
    files (BraTS: FLAIR, T1, T1c, T2) names them in its config's ``input_channels``; served, it takes one image
    carrying them all in that order (a 4D NIfTI), and its loader refuses another with a 400.

    Args:
        bundle_dir: the bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``).
        device: ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available). A request's ``device`` overrides it.
        trained_path: weights trained through MONAI Label (:class:`~.bundle_training.BundleTrainingTask`); used
            instead of the bundle's ``models/model.pt`` once they exist, and reloaded whenever the file changes.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        device: str | None = None,
        trained_path: str | os.PathLike | None = None,
        runtime: str | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        self.runtime = runtime
        self.config_file = self.bundle_dir / "configs" / "inference.json"
        self.bundle_model = self.bundle_dir / "models" / "model.pt"
        self.trained_path = Path(trained_path) if trained_path else None
        meta = json.loads((self.bundle_dir / "configs" / "metadata.json").read_text())
        self._bundle_config = config = read_config(self.bundle_dir, "inference.json")
        self.output_ext = ".png" if config.get("slice_axis") is None else ".nii.gz"
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=bundle_labels(self.bundle_dir),
            dimension=2 if config.get("slice_axis") is None else 3,
            description=meta.get("description", meta.get("name", self.bundle_dir.name)),
            config={"device": device or ""},
        )
        self._device = device
        self._lock = threading.Lock()
        self._network: tuple[Any, Any] | None = None
        self._loaded: tuple[str, int] | None = None
        self._net_device: torch.device | None = None

    @property
    def model_path(self) -> Path:
        """The weights served: MONAI Label-trained ones when present, else the bundle's."""
        if self.trained_path is not None and self.trained_path.is_file():
            return self.trained_path
        return self.bundle_model

    def is_valid(self) -> bool:
        return self.model_path.is_file() and self.config_file.is_file()

    def get_path(self, validate: bool = True) -> str | None:
        return str(self.model_path) if (self.model_path.is_file() or not validate) else None

    def _parser(self, device: torch.device) -> ConfigParser:
        parser = ConfigParser(copy.deepcopy(self._bundle_config))  # read once; every request parses its own copy
        parser["device"] = f"$torch.device('{device}')"
        if self.runtime:
            parser["runtime"] = self.runtime
        if self.model_path != self.bundle_model:  # weights from train.json: the network it trains, not the committed
            for key, value in (parser.get("trained_overrides") or {}).items():
                parser[key] = value
        return parser

    def network(self, device: torch.device) -> tuple[Any, Any]:
        """``(network_def, network)`` with the bundle's weights, built once."""
        with self._lock:
            path = self.model_path
            stamp = (str(path), path.stat().st_mtime_ns)
            if self._network is None or (self._loaded and self._loaded[0] != str(path)):  # committed <-> trained
                parser = self._parser(device)
                self._network = (parser.get_parsed_content("network_def"), parser.get_parsed_content("network"))
                self._net_device = device
            if self._loaded != stamp:
                state = read_checkpoint(path, f"model {self.bundle_dir.name!r} weights")
                Checkpoint.load_objects(to_load={"model": self._network[1]}, checkpoint=state)
                self._network[1].eval()
                self._loaded = stamp
                logger.info(f"{self.bundle_dir.name}: weights {path}")
            return self._network

    def segment(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        image = request.get("image")
        if not isinstance(image, str) or not image or not os.path.exists(image):
            raise RequestError(f"model {self.bundle_dir.name!r}: no image file {image!r} to segment.", 404)
        device = self._net_device or device_for(request.get("device") or self._device)
        net_def, net = self.network(device)
        parser = self._parser(device)
        out_dir = Path(tempfile.mkdtemp(prefix=f"{self.bundle_dir.name}-"))
        try:
            parser["network_def"], parser["network"] = net_def, net
            parser["data"] = [{"image": image}]
            parser["dataset_dir"] = str(Path(image).parent)
            parser["output_dir"] = str(out_dir)
            parser["num_workers"] = 0
            parser["handlers"] = []
            if parser.get("mask_scale") is not None:  # 2D: the label value, not the 0/255 of the bundle's mask files
                parser["mask_scale"] = None
            try:
                parser.get_parsed_content("evaluator", lazy=False).run()
            except Exception as e:
                bad = input_error(e)
                if bad is not None:
                    raise RequestError(f"model {self.bundle_dir.name!r}: {bad}", 400) from e
                raise
            out = single_output(out_dir, self.output_ext)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        return out, {"model": self.bundle_dir.name, "label_names": self.labels}
