"""Interactive segmentation on the frozen backbone for MONAI Label: clicks and boxes become SAM prompts."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import SaveImage
from monai.transforms.utils import generate_spatial_bounding_box
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from segment_anything.utils.transforms import ResizeLongestSide

from ..io import AtomicNibabelWriter, PILMaskWriter
from ..runtime import check_runtime, use_runtime
from ..sam.backbones import DEFAULT_BACKBONE, FrozenSAM
from ..sam.cache import EmbeddingCache
from ..transforms import CTWindow, SAMPreprocess
from .errors import RequestError
from .guard import TimeLimitedTask
from .inputs import device_for, read_input, single_output

__all__ = ["CLICK_SCALES", "InteractiveSAMTask", "click_box"]


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
        start, end = generate_spatial_bounding_box(prior[None])
        pts += [[float(v) for v in start], [float(v) - 1.0 for v in end]]
    elif pts:
        grow = margin
    if not pts:
        return None
    a = np.asarray(pts)
    lo, hi = a.min(0) - grow, a.max(0) + grow
    return [max(lo[0], 0.0), max(lo[1], 0.0), min(hi[0], shape[0] - 1.0), min(hi[1], shape[1] - 1.0)]


class InteractiveSAMTask(TimeLimitedTask, InferTask):
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

    The image embedding of each slice is kept (:class:`~monai_sam_adapt.sam.EmbeddingCache`, keyed by the exact
    encoder input: the same image, slice and window): the first request on a slice runs the image encoder, the next
    clicks or boxes on it only the decoder. A changed image, slice or window is a different key (never a stale hit);
    ``cache_size`` slices are kept (about 4 MB each for LiteMedSAM), least recently used first out; requests may
    come concurrently.

    Args:
        backbone: a :class:`FrozenSAM` or registry name. Default LiteMedSAM (offline weights).
        checkpoint: its checkpoint when ``backbone`` is a name. Default ``"default"``.
        device: ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available).
        runtime: how the image encoder runs (:data:`monai_sam_adapt.runtime.RUNTIMES`). Default ``"torch"``.
            ``"openvino-int8"`` runs it as ``"openvino"``: int8 is calibrated per bundle on its training images, and
            the interactive model has none.
        cache_size: slice embeddings kept. Default 32.
        cache_bytes: memory the kept embeddings may take, least recently used out first. Default 512 MiB.
        backbone_kwargs: architecture overrides (tiny test models).
    """

    def __init__(
        self,
        backbone: FrozenSAM | str = DEFAULT_BACKBONE,
        checkpoint: Any = "default",
        device: str | None = None,
        click_box: bool | None = None,
        click_margin: float = 0.1,
        runtime: str = "torch",
        cache_size: int = 32,
        cache_bytes: int = 512 * 2**20,
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
        self.runtime = check_runtime(runtime)
        self.cache_size = int(cache_size)
        self.cache_bytes = int(cache_bytes)
        self._sam: FrozenSAM | None = None
        self._embeddings: EmbeddingCache | None = None
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    def sam(self, device: torch.device) -> FrozenSAM:
        with self._lock:
            if self._sam is None:
                b = self._backbone
                self._sam = b if isinstance(b, FrozenSAM) else FrozenSAM(b, self._checkpoint, **self._kwargs)
                use_runtime(self._sam, "openvino" if self.runtime == "openvino-int8" else self.runtime)
                self._embeddings = EmbeddingCache(
                    max_entries=self.cache_size, max_bytes=self.cache_bytes, fingerprint=self._sam.fingerprint
                )
            return self._sam.to(device)

    def segment(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
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
        if box is not None:
            want = f"[x0, y0, x1, y1{', z' if ndim == 3 else ''}]"
            try:
                box = [float(v) for v in box]
            except (TypeError, ValueError):
                raise RequestError(f"box {request.get('box')!r} must be {want} numbers.") from None
            if len(box) != 2 + ndim:
                raise RequestError(f"box {box} must be {want}.")
            if ndim == 3 and not 0 <= int(box[4]) < spatial[2]:
                raise RequestError(f"box {box}: slice {int(box[4])} is outside the image ({spatial[2]} slices).")
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

        device = device_for(request.get("device") or self._device)
        sam = self.sam(device)
        result = (label[0] if label is not None else torch.zeros(spatial)).clone().to(torch.int64)
        encoded: list[int] = []  # slices this request had to encode (the others' embeddings were reused)

        def encode(x: torch.Tensor) -> torch.Tensor:
            encoded.append(x.shape[0])
            return sam.encode(x)

        with torch.no_grad():
            for k, prompts in sorted(by_slice.items()):
                plane = image[..., k] if ndim == 3 else image
                prior = None if label is None else ((label[0][..., k] if ndim == 3 else label[0]) == value)
                mask = self._segment_plane(sam, plane, prompts, prior, device, encode)
                target = result[..., k] if ndim == 3 else result
                target[target == value] = 0
                target[mask & (target == 0)] = value  # other labels' voxels are never taken over
        params = {"slices": sorted(by_slice), "label_value": value, "encoded_slices": sum(encoded)}
        params["reused_slices"] = len(by_slice) - params["encoded_slices"]
        return self._write(result, image), params

    def _segment_plane(
        self,
        sam: FrozenSAM,
        plane: torch.Tensor,
        prompts: dict,
        prior: torch.Tensor | None,
        device: torch.device,
        encode: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """One 2D plane ``(C, H, W)`` (rows first) with its prompts -> boolean mask ``(H, W)`` on the plane's grid."""
        s = sam.image_size
        pre = SAMPreprocess(sam.spec, image_size=s)
        x = pre(MetaTensor(plane.float()))
        h, w = plane.shape[-2:]
        resize = ResizeLongestSide(s)  # SAM's own prompt geometry: x along columns, y along rows

        def to_sam(rows_cols: Sequence[float]) -> list[float]:
            r, c = rows_cols
            return resize.apply_coords(np.asarray([[c, r]], dtype=float), (h, w))[0].tolist()

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
        emb = self._embeddings(x.as_tensor()[None].to(device), encode)
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
            return single_output(out_dir, ".png" if is_2d else ".nii.gz")
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
