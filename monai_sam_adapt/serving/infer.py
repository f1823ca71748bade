"""MONAI Label inference tasks: a bundle as an automatic model, and interactive SAM on the frozen backbone."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.handlers import Checkpoint
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import SaveImage
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ..bundle import read_config
from ..io import AtomicNibabelWriter, PILMaskWriter
from ..sam.backbones import DEFAULT_BACKBONE, FrozenSAM
from ..transforms import CTWindow, SAMPreprocess
from ..transforms.dictionary import InputError, LoadMedicalImaged
from .errors import RequestError

__all__ = [
    "BundleInferTask",
    "InteractiveSAMTask",
    "bundle_labels",
    "click_box",
    "image_shape",
    "input_error",
    "read_input",
]

logger = logging.getLogger(__name__)


def input_error(e: BaseException) -> InputError | None:
    """The :class:`InputError` (unreadable or mismatched input file) in an exception's cause chain, if any: MONAI
    wraps transform errors in ``RuntimeError`` twice."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, InputError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def read_input(path: Any, what: str) -> MetaTensor:
    """A request's image or label as loaded for our pipelines; 404 when there is no such file, 400 (naming the file
    and what is wrong) when it cannot be read."""
    if not isinstance(path, (str, os.PathLike)) or not str(path) or not os.path.exists(path):
        raise RequestError(f"no {what} file {str(path)!r}.", 404)
    try:
        return LoadMedicalImaged("x")({"x": str(path)})["x"]
    except InputError as e:
        raise RequestError(f"{what}: {e}", 400) from e


def image_shape(path: str | os.PathLike, what: str) -> tuple[int, ...]:
    """``(C, *spatial)`` of an image as :func:`read_input` would load it; from the header alone for NIfTI (no voxel
    data read), else by loading it."""
    import nibabel as nib

    try:
        shape = tuple(nib.load(str(path)).shape) if str(path).endswith((".nii", ".nii.gz")) else None
    except Exception:  # noqa: BLE001 - let the full reader say what is wrong with the file
        shape = None
    if shape is not None and len(shape) in (2, 3):
        return (1, *shape)
    if shape is not None and len(shape) == 4:
        return (shape[3], *shape[:3])
    return tuple(read_input(path, what).shape)


def bundle_labels(bundle_dir: str | os.PathLike) -> dict[str, int]:
    """``{label name: value}`` of a bundle: names from ``metadata.json`` (the prediction's ``channel_def``), values
    from the inference config's ``label_values`` (default ``1..K``)."""
    cfg = Path(bundle_dir) / "configs"
    meta = json.loads((cfg / "metadata.json").read_text())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    names = [channels[k] for k in sorted(channels, key=int) if str(channels[k]).lower() != "background"]
    values = read_config(bundle_dir).get("label_values") or list(range(1, len(names) + 1))
    if len(values) != len(names):
        raise ValueError(f"{cfg / 'inference.json'}: {len(values)} label_values for {len(names)} labels {names}.")
    return dict(zip(names, map(int, values)))


def _device(requested: Any) -> torch.device:
    name = str(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(name)


def _single_output(folder: Path, suffix: str) -> str:
    """Move the one file an evaluator wrote under ``folder`` to a temporary file MONAI Label will delete."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"expected one prediction file under {folder}, found {[str(f) for f in files]}.")
    fd, out = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    shutil.move(str(files[0]), out)
    return out


class BundleInferTask(InferTask):
    """A bundle under ``bundles/`` as a MONAI Label automatic segmentation model.

    Runs the bundle's own ``configs/inference.json`` (pre-processing, network, inferer, inverse transforms and writer)
    on the one requested image; the network is built and its ``models/model.pt`` loaded (``weights_only``) once, then
    shared by every request. The label comes back on the input's own grid (the bundle's ``Invertd``), with the
    bundle's label values; its names come from ``metadata.json``. A bundle whose dataset keeps channels in separate
    files (BRATS: FLAIR, T1c) names them in its config's ``input_channels``; served, it takes one image carrying
    them all (a 4D NIfTI) and refuses another with a 400.

    Args:
        bundle_dir: the bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``).
        device: ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available). A request's ``device`` overrides it.
        trained_path: weights trained through MONAI Label (:class:`~.train.BundleTrainTask`); used instead of the
            bundle's ``models/model.pt`` once they exist, and reloaded whenever the file changes.
    """

    def __init__(
        self, bundle_dir: str | os.PathLike, device: str | None = None, trained_path: str | os.PathLike | None = None
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        self.config_file = self.bundle_dir / "configs" / "inference.json"
        self.bundle_model = self.bundle_dir / "models" / "model.pt"
        self.trained_path = Path(trained_path) if trained_path else None
        meta = json.loads((self.bundle_dir / "configs" / "metadata.json").read_text())
        self._bundle_config = config = read_config(self.bundle_dir, "inference.json")
        self.output_ext = ".png" if config.get("slice_axis") is None else ".nii.gz"
        self.input_channels = list(config.get("input_channels") or [])
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
        return parser

    def network(self, device: torch.device) -> tuple[Any, Any]:
        """``(network_def, network)`` with the bundle's weights, built once."""
        with self._lock:
            path = self.model_path
            stamp = (str(path), path.stat().st_mtime_ns)
            if self._network is None:
                parser = self._parser(device)
                self._network = (parser.get_parsed_content("network_def"), parser.get_parsed_content("network"))
                self._net_device = device
            if self._loaded != stamp:
                state = torch.load(path, map_location=device, weights_only=True)
                Checkpoint.load_objects(to_load={"model": self._network[1]}, checkpoint=state)
                self._network[1].eval()
                self._loaded = stamp
                logger.info(f"{self.bundle_dir.name}: weights {path}")
            return self._network

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        image = request.get("image")
        if not isinstance(image, str) or not image or not os.path.exists(image):
            raise RequestError(f"model {self.bundle_dir.name!r}: no image file {image!r} to segment.", 404)
        channels = self.input_channels
        if channels:  # one file must carry every channel the bundle reads from several (e.g. FLAIR and T1c)
            got = image_shape(image, "image")[0]
            if got != len(channels):
                raise RequestError(
                    f"model {self.bundle_dir.name!r} needs {len(channels)} channels {channels} in one "
                    f"image (e.g. a 4D NIfTI); {image!r} has {got}.",
                    400,
                )
        device = self._net_device or _device(request.get("device") or self._device)
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
            try:
                parser.get_parsed_content("evaluator", lazy=False).run()
            except Exception as e:
                bad = input_error(e)
                if bad is not None:
                    raise RequestError(f"model {self.bundle_dir.name!r}: {bad}", 400) from e
                raise
            out = _single_output(out_dir, self.output_ext)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        return out, {"model": self.bundle_dir.name, "label_names": self.labels}


def _points(request: dict[str, Any], key: str, ndim: int, shape: Sequence[int]) -> list[list[int]]:
    pts = request.get(key) or []
    out = []
    for p in pts:
        p = [int(round(float(v))) for v in p]
        if len(p) != ndim:
            raise RequestError(f"{key} point {p} has {len(p)} coordinates; this {ndim}D image needs {ndim}.")
        # points are [x, y(, z)]: for 2D images x is the column and y the row; for volumes the voxel index (i, j, k)
        idx = [p[1], p[0]] if ndim == 2 else p
        if any(not 0 <= v < s for v, s in zip(idx, shape)):
            raise RequestError(f"{key} point {p} lies outside the image (array shape {tuple(shape)}).")
        out.append(idx)
    return out


#: Sizes tried for a box from clicks alone, as multiples of ``click_margin``; SAM's predicted IoU picks one.
CLICK_SCALES = (0.5, 1.0, 2.0, 3.0)


def click_box(
    fg: Sequence[Sequence[int]], prior: torch.Tensor | None, margin: float, shape: Sequence[int]
) -> list[float] | None:
    """``(row0, col0, row1, col1)`` around a slice's region being refined (``prior``) and its foreground clicks;
    without a region, around the clicks grown by ``margin`` pixels (clipped to the slice). ``None`` without clicks
    and region."""
    pts = [list(map(float, p)) for p in fg]
    grow = 0.0
    if prior is not None and bool(prior.any()):
        idx = torch.nonzero(prior)
        pts += [idx.min(0).values.tolist(), idx.max(0).values.tolist()]
    elif pts:
        grow = margin
    if not pts:
        return None
    a = np.asarray(pts)
    lo, hi = a.min(0) - grow, a.max(0) + grow
    return [max(lo[0], 0.0), max(lo[1], 0.0), min(hi[0], shape[0] - 1.0), min(hi[1], shape[1] - 1.0)]


class InteractiveSAMTask(InferTask):
    """Interactive segmentation on the frozen backbone: clicks and/or a box become SAM prompts.

    Request parameters (MONAI Label's DeepGrow convention, as OHIF sends them):

    - ``foreground`` / ``background``: ``[[x, y, z], ...]`` voxel indices of the image file (for 2D images ``[x, y]``,
      column then row). A volume is handled slice by slice, on the slices that have clicks or a box.
    - ``box``: ``[x0, y0, x1, y1]`` (2D) or ``[x0, y0, x1, y1, z]`` in the same indices.
    - a ``label`` file (the automatic mask to refine) with ``label_value`` (default 1): on every clicked slice that
      label's region is given to SAM as a mask prompt together with the clicks, and replaced by the result (never
      over another label's voxels); the rest of the label map is returned unchanged.
    - ``ct_window``: a :data:`~monai_sam_adapt.transforms.CT_WINDOWS` preset applied before SAM's per-slice scaling.

    LiteMedSAM (like MedSAM) was trained with box prompts only: a point alone gives it no usable mask (measured in
    ``tests/serving/test_tasks.py``). With ``click_box`` (the default for ``lite_medsam``) a slice without a box gets
    one from its clicks: the box around the region being refined and the foreground clicks, or, without a mask,
    around the foreground clicks grown by ``click_margin`` x the slice's longest side times each of
    :data:`CLICK_SCALES`, SAM's own predicted IoU choosing among them; the clicks are still given as point prompts.

    The result is a label map on the input's grid (NIfTI for volumes, PNG for 2D images).

    Args:
        backbone: a :class:`FrozenSAM` or registry name. Default LiteMedSAM (offline weights).
        checkpoint: its checkpoint when ``backbone`` is a name. Default ``"default"``.
        device: ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available).
        backbone_kwargs: architecture overrides (tiny test models).
    """

    def __init__(
        self,
        backbone: FrozenSAM | str = DEFAULT_BACKBONE,
        checkpoint: Any = "default",
        device: str | None = None,
        click_box: bool | None = None,
        click_margin: float = 0.1,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__(
            type=InferType.DEEPGROW,
            labels=None,
            dimension=3,
            description="SAM refinement: foreground/background clicks or a box (optionally on a mask)",
            config={"ct_window": "", "label_value": 1},
        )
        self._backbone, self._checkpoint, self._kwargs = backbone, checkpoint, backbone_kwargs
        name = backbone.name if isinstance(backbone, FrozenSAM) else str(backbone)
        self.click_box = (name == "lite_medsam") if click_box is None else bool(click_box)
        self.click_margin = float(click_margin)
        self._device = device
        self._sam: FrozenSAM | None = None
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def sam(self, device: torch.device) -> FrozenSAM:
        with self._lock:
            if self._sam is None:
                b = self._backbone
                self._sam = b if isinstance(b, FrozenSAM) else FrozenSAM(b, self._checkpoint, **self._kwargs)
            return self._sam.to(device)

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        image = read_input(request.get("image"), "image")
        spatial = tuple(image.shape[1:])
        ndim = len(spatial)
        label = None
        value = int(request.get("label_value", 1))
        if request.get("label"):
            label = read_input(request["label"], "label")
            if tuple(label.shape[1:]) != spatial:
                raise RequestError(
                    f"label {request['label']!r} has shape {tuple(label.shape[1:])}, the image "
                    f"{spatial}: a label must be on the image's grid.",
                    400,
                )
        fg = _points(request, "foreground", ndim, spatial)
        bg = _points(request, "background", ndim, spatial)
        box = request.get("box")
        if box is not None and len(box) != 2 + ndim:
            raise RequestError(f"box {box} must be [x0, y0, x1, y1{', z' if ndim == 3 else ''}].")
        if not fg and box is None:
            raise RequestError("interactive SAM needs at least one foreground click or a box.")
        window = request.get("ct_window") or ""
        if window:
            image = CTWindow(window)(image)

        by_slice: dict[int, dict[str, list]] = defaultdict(lambda: {"fg": [], "bg": [], "box": None})
        for key, pts in (("fg", fg), ("bg", bg)):
            for p in pts:
                by_slice[p[2] if ndim == 3 else 0][key].append(p[:2])
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box[:4])
            # as (row0, col0, row1, col1) of the plane: a 2D image's x is its column, a volume's x (i) its row
            by_slice[int(box[4]) if ndim == 3 else 0]["box"] = [y0, x0, y1, x1] if ndim == 2 else [x0, y0, x1, y1]
        for k, prompts in by_slice.items():
            if not prompts["fg"] and prompts["box"] is None:
                raise RequestError(f"slice {k} has only background clicks: add a foreground click or a box there.")

        device = _device(request.get("device") or self._device)
        sam = self.sam(device)
        result = (label[0] if label is not None else torch.zeros(spatial)).clone().to(torch.int64)
        with torch.no_grad():
            for k, prompts in sorted(by_slice.items()):
                plane = image[..., k] if ndim == 3 else image
                prior = None if label is None else ((label[0][..., k] if ndim == 3 else label[0]) == value)
                mask = self._segment_plane(sam, plane, prompts, prior, device)
                target = result[..., k] if ndim == 3 else result
                target[target == value] = 0
                target[mask & (target == 0)] = value  # other labels' voxels are never taken over
        return self._write(result, image), {"slices": sorted(by_slice), "label_value": value}

    def _segment_plane(
        self, sam: FrozenSAM, plane: torch.Tensor, prompts: dict, prior: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """One 2D plane ``(C, H, W)`` (rows first) with its prompts -> boolean mask ``(H, W)`` on the plane's grid."""
        s = sam.image_size
        pre = SAMPreprocess(sam.spec, image_size=s)
        x = pre(MetaTensor(plane.float()))
        h, w = plane.shape[-2:]
        rh, rw = pre.transforms[1].output_size((h, w))
        sy, sx = rh / h, rw / w  # SAM's coordinates: x along columns, y along rows; pixel centres map exactly

        def to_sam(rows_cols: Sequence[float]) -> list[float]:
            r, c = rows_cols
            return [(c + 0.5) * sx - 0.5, (r + 0.5) * sy - 0.5]

        pts = [to_sam(p) for p in prompts["fg"]] + [to_sam(p) for p in prompts["bg"]]
        lab = [1] * len(prompts["fg"]) + [0] * len(prompts["bg"])
        points = torch.tensor([[pts]], dtype=torch.float32, device=device) if pts else None
        labels = torch.tensor([[lab]], dtype=torch.int64, device=device) if pts else None
        candidates = [prompts["box"]] if prompts["box"] is not None else []
        if not candidates and self.click_box:
            grown = prior is None or not bool(prior.any())  # clicks alone: the object's size is unknown
            scales = CLICK_SCALES if grown else (1.0,)
            candidates = [
                b for f in scales if (b := click_box(prompts["fg"], prior, f * self.click_margin * max(h, w), (h, w)))
            ]
        n = max(len(candidates), 1)
        boxes = None
        if candidates:
            boxes = torch.tensor(
                [[to_sam(b[:2]) + to_sam(b[2:]) for b in candidates]], dtype=torch.float32, device=device
            )
        if points is not None:
            points, labels = points.expand(-1, n, -1, -1), labels.expand(-1, n, -1)
        masks = None
        if prior is not None and bool(prior.any()):
            m = SAMPreprocess(sam.spec, image_size=s, label=True)(MetaTensor(prior[None].float()))
            low = 4 * sam.embedding_size[0]
            m = F.interpolate(m.as_tensor()[None], size=(low, low), mode="area")
            masks = ((m * 2 - 1) * 10).to(device)[:, None].expand(-1, n, -1, -1, -1)  # logits: +10 in, -10 out
        emb = sam.encode(x.as_tensor()[None].to(device))
        single = masks is None and boxes is None and len(lab) == 1
        logits, iou = sam.decode(
            emb, boxes=boxes, points=points, point_labels=labels, masks=masks, multimask_output=single
        )  # one click is ambiguous: keep SAM's best of three
        # several candidate boxes (or SAM's three masks for one click): keep the one SAM scores best
        flat_logits, flat_iou = logits[0].flatten(0, 1), iou[0].flatten()
        up = sam.upscale(flat_logits[int(flat_iou.argmax())])[None].cpu()
        back = pre.inverse(MetaTensor(up, meta=x.meta, applied_operations=x.applied_operations))
        return back[0] > 0

    @staticmethod
    def _write(result: torch.Tensor, image: MetaTensor) -> str:
        out_dir = Path(tempfile.mkdtemp(prefix="sam-interactive-"))
        try:
            is_2d = result.ndim == 2
            saver = SaveImage(
                output_dir=str(out_dir),
                output_postfix="sam",
                output_ext=".png" if is_2d else ".nii.gz",
                writer=PILMaskWriter if is_2d else AtomicNibabelWriter,
                separate_folder=False,
                resample=False,
                output_dtype=np.uint8,
                print_log=False,
            )
            saver(MetaTensor(result[None].to(torch.uint8), meta=dict(image.meta)))
            return _single_output(out_dir, ".png" if is_2d else ".nii.gz")
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
