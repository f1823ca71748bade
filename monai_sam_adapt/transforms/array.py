"""Array transforms: CT windowing, channel handling, label selection, SAM geometry and box prompts.

Everything that MONAI already has is used as it is (``ScaleIntensityRangePercentiles`` for MR, ``AsDiscrete``,
``RandCropByPosNegLabel``, ``SliceInferer``...); what is here is what SAM adds on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import monai.transforms
import numpy as np
import torch
from monai.config import DtypeLike, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    Compose,
    RepeatChannel,
    Resize,
    ScaleIntensityRange,
    SpatialPad,
    Transform,
)
from monai.transforms.spatial.functional import resize
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_to_tensor, ensure_tuple

from ..sam.backbones import BackboneSpec, get_spec

__all__ = [
    "CT_WINDOWS",
    "AssembleLabels",
    "BoxFromLabel",
    "CTWindow",
    "EnsureThreeChannels",
    "SAMPreprocess",
    "SAMResizeLongest",
    "SelectLabels",
    "sam_intensity",
    "written_label_values",
]

#: Named CT windows as (width, level) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "soft_tissue": (350.0, 50.0),
    "mediastinum": (350.0, 50.0),
}


class CTWindow(ScaleIntensityRange):
    """Clip a CT image to a window and scale it to ``[b_min, b_max]``.

    Args:
        preset: a name from :data:`CT_WINDOWS` (``abdomen``, ``liver``, ``lung``, ``bone``, ``brain``,
            ``soft_tissue``, ``mediastinum``), or ``None`` to give ``width`` and ``level``. Default ``None``.
        width: window width in HU (overrides the preset's). Default ``None``.
        level: window level (centre) in HU (overrides the preset's). Default ``None``.
        b_min: output value of the window's lower edge. Default 0.
        b_max: output value of the window's upper edge. Default 1.
        clip: clip to ``[b_min, b_max]``. Default ``True``.
        dtype: output dtype. Default ``np.float32``.

    Example::

        CTWindow("liver")(ct)            # HU in [-45, 105] -> [0, 1]
        CTWindow(width=400, level=40)(ct)
    """

    def __init__(
        self,
        preset: str | None = None,
        width: float | None = None,
        level: float | None = None,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        dtype: DtypeLike = np.float32,
    ) -> None:
        if preset is not None and preset not in CT_WINDOWS:
            raise ValueError(f"unknown CT window preset {preset!r}; known presets: {sorted(CT_WINDOWS)}.")
        w, lv = CT_WINDOWS[preset] if preset is not None else (None, None)
        w = width if width is not None else w
        lv = level if level is not None else lv
        if w is None or lv is None:
            raise ValueError("CTWindow needs a preset or both width and level.")
        if w <= 0:
            raise ValueError(f"width must be positive, got {w}.")
        self.width, self.level = float(w), float(lv)
        super().__init__(a_min=lv - w / 2, a_max=lv + w / 2, b_min=b_min, b_max=b_max, clip=clip, dtype=dtype)


class EnsureThreeChannels(Transform):
    """Make a channel-first image three-channel, as every SAM image encoder expects.

    1 channel (CT, grey MR, grey microscopy) is repeated; 3 channels are kept; 4 (RGBA) drop alpha; 2 channels
    (e.g. FLAIR + T1c) become ``(c0, c1, mean)``. Other counts raise ``ValueError``.

    Args:
        in_channels: the channels of a network that maps its input to SAM's three itself (``SSAM(in_channels=4)``
            for BraTS' four MR sequences): when not 3, an image must have exactly this many channels and passes
            unchanged (a 4-channel MR volume is never read as RGBA). Default 3.
    """

    def __init__(self, in_channels: int = 3) -> None:
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        self.in_channels = int(in_channels)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        c = img.shape[0]
        if self.in_channels != 3:
            if c != self.in_channels:
                raise ValueError(f"the network reads {self.in_channels} input channels, the image has {c}.")
            return img
        if c == 3:
            return img
        if c == 1:
            out = RepeatChannel(3)(img)
        elif c == 2:
            out = torch.cat([img, img.mean(0, keepdim=True)], 0)
        elif c == 4:
            out = img[:3]
        else:
            raise ValueError(f"cannot map an image with {c} channels to SAM's 3 (expected 1, 2, 3 or 4 channels).")
        return out


class SelectLabels(Transform):
    """Turn a label image into binary channels, one per class.

    Args:
        classes: ``None`` for a single foreground channel (everything non-zero, after ``threshold``); a sequence of
            label values (one channel each); or a mapping ``name -> value or list of values`` whose channels merge
            values (``{"liver": [1, 2], "tumor": [2]}``). Default ``None``.
        threshold: if given, values above it are foreground before anything else (JPEG masks are noisy: use 127).
            A mask that is not on that scale is never silently emptied: a 0/1 mask (every value 0 or 1) is read as
            0/1; any other mask with values but none above ``threshold`` (e.g. 0/1/2 label values) raises
            ``ValueError`` saying what it holds. Default ``None``.
        reduce_channels: a multi-channel label (an RGB mask) is first reduced to one channel by its maximum.
            Default ``True``.

    Returns a float tensor ``(K, *spatial)`` of 0/1, MetaTensor metadata kept.
    """

    def __init__(
        self,
        classes: Sequence[int] | Mapping[str, int | Sequence[int]] | None = None,
        threshold: float | None = None,
        reduce_channels: bool = True,
    ) -> None:
        if isinstance(classes, Mapping):
            self.names = list(classes)
            self.values = [list(ensure_tuple(v)) for v in classes.values()]
        elif classes is not None:
            self.names = [str(v) for v in classes]
            self.values = [[v] for v in classes]
        else:
            self.names, self.values = ["foreground"], None
        if self.values is not None and not all(self.values):
            raise ValueError(f"every class needs at least one label value, got {classes}.")
        self.threshold = threshold
        self.reduce_channels = reduce_channels

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        label = convert_to_tensor(label, track_meta=get_track_meta())
        if label.shape[0] > 1:
            if not self.reduce_channels:
                raise ValueError(f"expected a single-channel label, got {label.shape[0]} channels.")
            label = label.max(0, keepdim=True).values
        if self.threshold is not None:
            above = label > self.threshold
            if not bool(above.any()) and bool((label != 0).any()):
                values = torch.unique(label)
                if not bool(((values == 0) | (values == 1)).all()):
                    shown = [round(float(v), 3) for v in values[:8]]
                    raise ValueError(
                        f"label values {shown}{'...' if len(values) > 8 else ''} are not a 0/255 mask: none is above "
                        f"the threshold {self.threshold}, so it would be empty. Give a binary mask (0/255 or 0/1)."
                    )
                above = label > 0  # a 0/1 mask: its ones are the foreground
            label = above.to(torch.uint8)
        if self.values is None:
            return (label != 0).float()
        chans = [torch.isin(label[0], torch.as_tensor(v, device=label.device)) for v in self.values]
        return torch.stack(chans).float()


#: The shortest in-plane side an image may have, before and after SAM's resize.
MIN_SIDE = 4


class SAMResizeLongest(Resize):
    """SAM's resize: scale so that the longest in-plane side equals ``target_size``; invertible (MONAI ``Resize``).

    Args:
        target_size: the encoder's input side (e.g. 256 for LiteMedSAM, 1024 for SAM).
        slice_axis: for 3D volumes, the spatial axis (0, 1 or 2) that is *not* resized (slices are taken along it);
            ``None`` for 2D images. Default ``None``.
        mode: interpolation (``"bilinear"`` for images, ``"nearest"`` for labels). Default ``"bilinear"``.
        anti_aliasing: Gaussian smoothing before down-sampling (as PIL does for SAM). Default ``True``.
        kwargs: passed to MONAI's ``Resize``.
    """

    def __init__(
        self,
        target_size: int,
        slice_axis: int | None = None,
        mode: str = "bilinear",
        anti_aliasing: bool = True,
        **kwargs,
    ) -> None:
        if int(target_size) <= 0:
            raise ValueError(f"target_size must be positive, got {target_size}.")
        if slice_axis is not None and slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1, 2 or None, got {slice_axis}.")
        super().__init__(spatial_size=int(target_size), mode=mode, anti_aliasing=anti_aliasing, **kwargs)
        self.target_size = int(target_size)
        self.slice_axis = slice_axis

    def output_size(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The resized spatial shape: longest in-plane side equal to ``target_size`` (SAM's rounding)."""
        shape = [int(s) for s in spatial_shape]
        plane = [i for i in range(len(shape)) if i != self.slice_axis]
        if len(plane) != 2:
            raise ValueError(
                f"expected a 2D image (or 3D with slice_axis), got spatial shape {tuple(shape)} with "
                f"slice_axis={self.slice_axis}."
            )
        from segment_anything.utils.transforms import ResizeLongestSide

        sides = [shape[plane[0]], shape[plane[1]]]
        if min(sides) < MIN_SIDE:
            raise ValueError(
                f"the image is {sides[0]}x{sides[1]} pixels in plane: too small to segment (at least {MIN_SIDE} "
                "pixels a side)."
            )
        new = ResizeLongestSide.get_preprocess_shape(sides[0], sides[1], self.target_size)
        if min(new) < MIN_SIDE:
            raise ValueError(
                f"the image is {sides[0]}x{sides[1]} pixels in plane: too elongated for a {self.target_size} px "
                f"encoder (its short side would shrink to {min(new)} px; at least {MIN_SIDE} needed). Crop it first."
            )
        out = list(shape)
        out[plane[0]], out[plane[1]] = new
        return tuple(out)

    def __call__(
        self,
        img: torch.Tensor,
        mode: str | None = None,
        align_corners: bool | None = None,
        anti_aliasing: bool | None = None,
        anti_aliasing_sigma=None,
        dtype=None,
        lazy: bool | None = None,
    ) -> torch.Tensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        spatial = img.peek_pending_shape() if isinstance(img, MetaTensor) else img.shape[1:]
        return resize(  # type: ignore[return-value]
            img,
            self.output_size(spatial),
            mode or self.mode,
            self.align_corners if align_corners is None else align_corners,
            dtype or self.dtype or torch.float32,
            len(spatial),
            self.anti_aliasing if anti_aliasing is None else anti_aliasing,
            self.anti_aliasing_sigma if anti_aliasing_sigma is None else anti_aliasing_sigma,
            self.lazy if lazy is None else lazy,
            self.get_transform_info(),
        )


def sam_intensity(spec: BackboneSpec | str, channels: int = 3) -> list[Transform]:
    """The intensity normalisation a backbone expects, as MONAI array transforms (before padding, as SAM does)."""
    return [getattr(monai.transforms, name)(**kw) for name, kw in get_spec(spec).intensity_steps(channels)]


def _pad_size(target: int, slice_axis: int | None) -> tuple[int, ...]:
    if slice_axis is None:
        return (target, target)
    return tuple(-1 if i == slice_axis else target for i in range(3))


class SAMPreprocess(Compose):
    """A backbone's full image pre-processing: three channels, resize the longest side, normalise, pad (end) to a
    square.

    Invertible: ``inverse`` (or MONAI's ``Invertd`` with this transform) maps a prediction made at SAM resolution
    back onto the input's own grid exactly (padding cropped, then resized back).

    Args:
        backbone: registry name or :class:`BackboneSpec` (default ``"lite_medsam"``); gives size and normalisation.
        slice_axis: for 3D volumes, the axis slices are taken along; ``None`` for 2D. Default ``None``.
        image_size: override of the backbone's input side (tiny test models). Default ``None``.
        label: pre-process a label instead of an image (nearest resize, no intensity change, no channel change).
            Default ``False``.
        in_channels: input channels of a network with its own channel map (see :class:`EnsureThreeChannels`); such
            images are only min-max scaled to [0, 1] (:meth:`BackboneSpec.intensity_steps`). Default 3.
    """

    def __init__(
        self,
        backbone: str | BackboneSpec = "lite_medsam",
        slice_axis: int | None = None,
        image_size: int | None = None,
        label: bool = False,
        in_channels: int = 3,
    ) -> None:
        spec = get_spec(backbone)
        size = int(image_size or spec.image_size)
        if label:
            steps: list = [SAMResizeLongest(size, slice_axis, mode="nearest-exact", anti_aliasing=False)]
        else:
            steps = [
                EnsureThreeChannels(in_channels),
                SAMResizeLongest(size, slice_axis),
                *sam_intensity(spec, in_channels),
            ]
        steps.append(SpatialPad(_pad_size(size, slice_axis), method="end"))
        super().__init__(steps)


class BoxFromLabel(Transform):
    """Box prompts ``(x0, y0, x1, y1)`` around each channel's foreground, in pixel coordinates of the label.

    ``x`` runs along the last spatial axis (columns) and ``y`` along the one before (rows), as in SAM; the box spans
    pixel centres, so a single pixel at row r, column c gives ``(c, r, c, r)``.

    Args:
        margin: pixels added on every side (clipped to the image). Default 0.
        empty: what an empty channel gives: ``"full"`` (the whole image) or ``"error"``. Default ``"full"``.

    Returns a float tensor ``(K, 4)``.
    """

    def __init__(self, margin: int = 0, empty: str = "full") -> None:
        if empty not in ("full", "error"):
            raise ValueError(f"empty must be 'full' or 'error', got {empty!r}.")
        self.margin, self.empty = int(margin), empty

    def __call__(self, label: NdarrayOrTensor) -> torch.Tensor:
        label = convert_to_tensor(label, track_meta=False)
        if label.ndim != 3:
            raise ValueError(
                f"BoxFromLabel expects a channel-first 2D label (K, H, W), got shape {tuple(label.shape)}."
            )
        h, w = label.shape[-2:]
        boxes = []
        for ch in label:
            if not bool((ch > 0).any()):
                if self.empty == "error":
                    raise ValueError("cannot make a box prompt from an empty label channel.")
                boxes.append([0.0, 0.0, w - 1.0, h - 1.0])
                continue
            start, end = generate_spatial_bounding_box(ch[None] > 0)
            y0, x0 = start
            y1, x1 = end[0] - 1, end[1] - 1
            m = self.margin
            boxes.append([max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, w - 1), min(y1 + m, h - 1)])
        return torch.as_tensor(boxes, dtype=torch.float32)


class AssembleLabels(Transform):
    """One label map from per-label logits ``(K, *spatial)``.

    Channels of one label value each: a voxel takes the label of highest probability, or background where no label
    reaches ``threshold`` (overlapping predictions are resolved by score).

    Channels that are nested regions, each a set of label values (BraTS: whole tumour ``[1, 2, 4]``, tumour core
    ``[1, 4]``, enhancing ``[4]``): regions are painted largest first, each with the one value that is its own (in it
    and in no region inside it: 2, then 1, then 4), the way BraTS writes its regions back to labels. Regions must be
    nested or disjoint and each must own exactly one value.

    Args:
        values: the label value of each channel, or its set of values for regions. Default ``1..K``.
        threshold: minimum sigmoid probability of a label. Default 0.5.
        sigmoid: the input is logits (apply a sigmoid first). Default ``True``.

    Returns ``(1, *spatial)`` of label values (background 0), MetaTensor metadata kept.
    """

    def __init__(
        self, values: Sequence[int | Sequence[int]] | None = None, threshold: float = 0.5, sigmoid: bool = True
    ) -> None:
        self.values, self.threshold, self.sigmoid = values, threshold, sigmoid
        self.paint = None if values is None else _paint_order([set(ensure_tuple(v)) for v in values])

    def __call__(self, logits: NdarrayOrTensor) -> NdarrayOrTensor:
        x = convert_to_tensor(logits, track_meta=get_track_meta())
        values = list(self.values) if self.values is not None else list(range(1, x.shape[0] + 1))
        if len(values) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} label channels but {len(values)} label values {values}.")
        prob = torch.sigmoid(x.float()) if self.sigmoid else x.float()
        if self.paint is not None:
            out = torch.zeros_like(prob[:1])
            for channel, value in self.paint:
                out[prob[channel : channel + 1] >= self.threshold] = value
            return out
        best, idx = prob.max(0, keepdim=True)
        lut = torch.as_tensor([0, *values], device=x.device, dtype=torch.float32)
        return torch.where(best >= self.threshold, lut[idx + 1], lut[0])


def written_label_values(values: Sequence[int | Sequence[int]]) -> list[int]:
    """The label value :class:`AssembleLabels` writes for each channel: the value itself, or a region's own value
    (BraTS ``[[1, 2, 4], [1, 4], [4]]`` -> ``[2, 1, 4]``)."""
    paint = _paint_order([set(ensure_tuple(v)) for v in values])
    if paint is None:
        return [int(ensure_tuple(v)[0]) for v in values]
    return [int(v) for _, v in sorted(paint)]


def _paint_order(regions: list[set]) -> list[tuple[int, float]] | None:
    """``(channel, value)`` in painting order for nested label regions; ``None`` when every channel is one value."""
    if all(len(r) == 1 for r in regions):
        return None
    order = sorted(range(len(regions)), key=lambda i: -len(regions[i]))
    paint = []
    for i in order:
        r = regions[i]
        for j, q in enumerate(regions):
            if j != i and r & q and not (r <= q or q <= r):
                raise ValueError(f"label regions {sorted(r)} and {sorted(q)} overlap without one holding the other.")
        inside = set().union(*(q for j, q in enumerate(regions) if j != i and q < r))
        own = r - inside
        if len(own) != 1:
            raise ValueError(
                f"label region {sorted(r)} owns values {sorted(own)} (in it, in no region inside it): one is needed to "
                "write it as a label."
            )
        paint.append((i, float(own.pop())))
    return paint
