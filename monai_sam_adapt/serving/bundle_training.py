"""MONAI Label training task: the datastore's labelled images through a bundle's own ``train.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.train import TrainTask

from ..bundle import bundle_workflow
from ..data.datalists import split_by_case
from .errors import RequestError
from .inputs import device_for

__all__ = ["BundleTrainingTask"]

logger = logging.getLogger(__name__)


class BundleTrainingTask(TrainTask):
    """Train a bundle on the datastore's labelled images, as the bundle's ``configs/train.json`` trains.

    The datastore hands whole images (3D volumes or 2D images) with their final labels; the bundle's own pipeline
    samples slices from volumes (``RandSliced``) exactly as it does from its dataset. Images are split into training
    and validation by image (patient), never by slice. The best model is written to ``ckpt_dir/model.pt``, which
    :class:`~.bundle_task.BundleSegmentationTask` picks up at its next request.

    Args:
        bundle_dir: the bundle folder.
        ckpt_dir: where trained weights go (the app's ``model/<bundle>``; never the bundle's committed weights).
        output_dir: logs, TensorBoard and resumable checkpoints.
    """

    def __init__(self, bundle_dir: str | Path, ckpt_dir: str | Path, output_dir: str | Path) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        self.ckpt_dir, self.output_dir = Path(ckpt_dir), Path(output_dir)
        super().__init__(f"train {self.bundle_dir.name} with its configs/train.json on the datastore's labels")
        self._stats: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return {"max_epochs": 10, "val_fraction": 0.2, "val_interval": 1, "batch_size": 2, "learning_rate": 1e-3}

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def datalist(self, datastore: Any, val_fraction: float) -> dict[str, list[dict[str, str]]]:
        items = [d for d in datastore.datalist() if d.get("image") and d.get("label")]
        if len(items) < 2:
            raise RequestError(
                f"training {self.bundle_dir.name!r} needs at least 2 labelled images in the datastore; "
                f"it has {len(items)}.",
                400,
            )
        by_image = {str(d["image"]): {"image": str(d["image"]), "label": str(d["label"])} for d in items}
        train, val = split_by_case(list(by_image), val_fraction)
        return {"training": [by_image[k] for k in train], "validation": [by_image[k] for k in val]}

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        device = device_for(request["device"]) if request.get("device") else None  # checked: goes into an expression
        defaults = self.config()
        conf = dict(defaults)
        for k in defaults.keys() & request.keys():  # as the defaults' types
            try:
                conf[k] = type(defaults[k])(request[k])
            except (TypeError, ValueError):
                raise RequestError(
                    f"training {self.bundle_dir.name!r}: {k!r} must be {type(defaults[k]).__name__}, "
                    f"got {request[k]!r}.",
                    400,
                ) from None
        datalist = self.datalist(datastore, float(conf["val_fraction"]))
        run_dir = self.output_dir / time.strftime("%Y%m%d-%H%M%S")
        overrides = {
            "bundle_root": str(self.bundle_dir),
            "datalist": datalist,
            "dataset_dir": str(self.bundle_dir),
            "output_dir": str(run_dir),
            "ckpt_dir": str(self.ckpt_dir),
            "num_workers": 0,
            **{k: v for k, v in conf.items() if k != "val_fraction"},
        }
        if device is not None:
            overrides["device"] = f"$torch.device('{device}')"
        logger.info(
            f"training {self.bundle_dir.name}: {len(datalist['training'])} training and "
            f"{len(datalist['validation'])} validation images -> {self.ckpt_dir / 'model.pt'}"
        )
        start = time.time()
        wf = bundle_workflow(self.bundle_dir, "train.json", workflow_type="train", **overrides)
        wf.initialize()
        try:
            wf.run()
        finally:
            wf.finalize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        validator = wf.parser.get_parsed_content("validate#evaluator") if "validate" in wf.parser.config else None
        self._stats = {
            "epochs": int(trainer.state.epoch),
            "train_images": len(datalist["training"]),
            "val_images": len(datalist["validation"]),
            "seconds": round(time.time() - start, 1),
            "best_metric": None if validator is None else float(validator.state.best_metric),
            "model": str(self.ckpt_dir / "model.pt"),
        }
        return self.stats()
