"""The MONAI Label app: every bundle with weights as an automatic model, interactive SAM, bundle training."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any

import torch
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

import monai_sam_adapt

from ..bundle import bundle_labels, find_bundles
from ..errors import find_error
from ..runtime import check_runtime
from .bundle_task import BundleSegmentationTask
from .bundle_training import BundleTrainingTask
from .datastore import CheckedLocalDatastore, SegDICOMWebDatastore
from .errors import RequestError
from .guard import DEFAULT_INFER_TIMEOUT_S, InferenceTimeout, check_name, inside, upload_root
from .inputs import device_for
from .interactive import InteractiveSAMTask

__all__ = ["SAMAdaptApp", "INTERACTIVE", "default_bundles_dir", "served_bundles"]

logger = logging.getLogger(__name__)

#: Name of the interactive model in ``/info/``.
INTERACTIVE = "sam_interactive"


def default_bundles_dir() -> Path:
    """``bundles/`` beside the package (a clone or an editable install)."""
    return Path(monai_sam_adapt.__file__).resolve().parents[1] / "bundles"


def served_bundles(bundles_dir: str | os.PathLike, models: str = "all") -> dict[str, Path]:
    """The bundles to serve: ``models`` is ``"all"`` (every bundle with ``models/model.pt``) or comma-separated
    names, each of which must be a bundle with weights (a clear error otherwise)."""
    root = Path(bundles_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"bundles folder {str(root)!r} does not exist (set --conf bundles <folder>).")
    found = find_bundles(root)
    trained = {n: p for n, p in found.items() if (p / "models" / "model.pt").is_file()}
    wanted = [m.strip() for m in models.split(",") if m.strip() and m.strip() != INTERACTIVE]
    if models.strip() == "all":
        return trained
    missing = [m for m in wanted if m not in found]
    untrained = [m for m in wanted if m in found and m not in trained]
    if missing or untrained:
        raise ValueError(
            f"--conf models {models!r}: "
            + "; ".join(
                ([f"no bundle {missing} in {str(root)!r} (bundles: {sorted(found)})"] if missing else [])
                + ([f"{untrained} have no models/model.pt yet (train them first)"] if untrained else [])
            )
        )
    return {m: trained[m] for m in wanted}


class SAMAdaptApp(MONAILabelApp):
    """MONAI Label app serving monai_sam_adapt's bundles.

    ``--conf`` keys (``monailabel start_server ... --conf KEY VALUE``):

    - ``models``: ``all`` (default) or comma-separated bundle names; every bundle under ``bundles`` with
      ``models/model.pt`` is an automatic segmentation model named after its folder, labels from its metadata;
      ``sam_interactive`` (clicks/box/mask refinement on the frozen backbone) is always served.
    - ``bundles``: the bundles folder (default: ``bundles/`` of this checkout).
    - ``backbone`` / ``checkpoint``: the interactive model's frozen SAM (default LiteMedSAM, offline).
    - ``device``: ``cuda`` or ``cpu`` (default: CUDA when available).
    - ``runtime``: how the frozen image encoders run on a CPU: ``torch`` (default), ``torch-bf16``, ``onnxruntime``,
      ``openvino``, ``openvino-bf16`` (:mod:`monai_sam_adapt.runtime`), for every model and the interactive one.
    - ``infer_timeout_s``: longest inference before it is stopped and answered 503 (default 600).
    - ``max_upload_mb``: largest request body, larger ones answered 413 before they are read (default 2048).
    - ``interactive_cache_mb``: memory for the interactive model's slice embeddings (default 512).

    Nothing is downloaded at start: no model zoo, no SAM2, no dcmqi (DICOM SEG is written with highdicom).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundles_dir = Path(conf.get("bundles") or default_bundles_dir()).resolve()
        self.bundles = served_bundles(self.bundles_dir, conf.get("models", "all"))
        self.device = conf.get("device") or None
        self.runtime = check_runtime(conf.get("runtime") or "torch")
        self.infer_timeout_s = float(conf.get("infer_timeout_s", DEFAULT_INFER_TIMEOUT_S))
        self.interactive_cache_mb = float(conf.get("interactive_cache_mb", 512))
        self.model_dir = Path(app_dir) / "model"
        labels: dict[str, int] = {}
        for path in self.bundles.values():
            for name, value in bundle_labels(path).items():
                labels.setdefault(name, value)
        self.served_labels = labels
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_sam_adapt",
            description="Fully automatic SAM (AutoSAM, S-SAM) and interactive SAM refinement",
            version=monai_sam_adapt.__version__,
            labels=None,
        )

    def init_datastore(self) -> Datastore:
        studies = self.studies.rstrip("/").strip()
        if studies.startswith(("http://", "https://")):
            self.studies = studies
            client = DICOMwebClientX(
                url=studies,
                qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
            )
            return SegDICOMWebDatastore(
                client=client,
                search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
                cache_path=settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or None,
                fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
                convert_to_nifti=settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI,
                labels=self.served_labels,
            )
        return CheckedLocalDatastore(
            studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {
            name: BundleSegmentationTask(
                path, device=self.device, trained_path=self.model_dir / name / "model.pt", runtime=self.runtime
            )
            for name, path in self.bundles.items()
        }
        infers[INTERACTIVE] = InteractiveSAMTask(
            self.conf.get("backbone", "lite_medsam"),
            self.conf.get("checkpoint", "default"),
            device=self.device,
            runtime=self.runtime,
            cache_bytes=int(self.interactive_cache_mb * 2**20),
        )
        for task in infers.values():
            task.time_limit_s = self.infer_timeout_s
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        return {
            name: BundleTrainingTask(path, ckpt_dir=self.model_dir / name, output_dir=self.model_dir / name / "runs")
            for name, path in self.bundles.items()
        }

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's inference, after checking what the request names (its ``params`` may set any key):

        - ``model``: a served model (404 naming it otherwise);
        - ``image``: an image id of the datastore (a plain name, 400; known, 404), the file uploaded with this
          request, or the image of its session; ``label``: the file uploaded with it; never another path on the
          server (400 naming the parameter);
        - ``label_tag`` of a saved result: a plain name; ``device``: ``cpu``/``cuda[:N]``.

        Inference runs within ``--conf infer_timeout_s`` (default 600 s): past it, it is stopped at its next layer,
        its memory freed, and the request answered 503.
        """
        model = request.get("model")
        if model not in self._infers:
            raise RequestError(f"unknown model {model!r}; served models: {sorted(self._infers)}.", 404)
        sessions = self.sessions()
        received = [upload_root()] + ([sessions.store_path] if sessions is not None else [])
        image = request.get("image")
        if isinstance(image, str):
            if _uploaded(image, received) is None:
                check_name(image, "image")
                store = datastore or self.datastore()
                if image not in store.list_images():
                    raise RequestError(f"unknown image {image!r}: not in the datastore {store.name()!r}.", 404)
        elif image is not None:
            raise RequestError(f"parameter 'image': {image!r} is not an image id.", 400)
        if request.get("label") and _uploaded(request["label"], [upload_root()]) is None:
            raise RequestError("parameter 'label': a label to refine is uploaded with the request, not named.", 400)
        if request.get("save_label"):
            check_name(request.get("label_tag", "original"), "label_tag")
        if request.get("device"):
            device_for(request["device"])
        try:
            return super().infer(request, datastore)  # each task runs within its time_limit_s
        except Exception as error:  # noqa: BLE001 - only a timeout is answered here; the config parser wraps it
            e = find_error(error, (InferenceTimeout,))
            if e is None:
                raise
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise RequestError(
                f"model {model!r}: inference {e}, this server's limit (--conf infer_timeout_s); its memory is freed.",
                503,
            ) from e


def _uploaded(value: Any, roots: list[str]) -> str | None:
    """``value`` if it is a file the server received (a request's upload or a session's image: inside ``roots``),
    else ``None``."""
    if not isinstance(value, str) or not (os.path.isabs(value) or os.sep in value) or "\x00" in value:
        return None
    return value if inside(value, *roots) and os.path.exists(value) else None
