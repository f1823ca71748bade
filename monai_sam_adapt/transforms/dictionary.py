"""Dictionary versions of :mod:`monai_sam_adapt.transforms.array`, loading with clear errors, 2D slice sampling."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import monai.transforms
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    InvertibleTransform,
    MapTransform,
    RandCropByPosNegLabeld,
    SpatialPadd,
    SqueezeDimd,
)
from monai.utils import ensure_tuple, ensure_tuple_rep

from ..errors import InputError
from ..sam.backbones import BackboneSpec, get_spec
from .array import (
    AssembleLabels,
    BoxFromLabel,
    CTWindow,
    EnsureThreeChannels,
    SAMResizeLongest,
    SelectLabels,
    _pad_size,
)

__all__ = [
    "AssembleLabelsD",
    "AssembleLabelsDict",
    "AssembleLabelsd",
    "BoxFromLabelD",
    "BoxFromLabelDict",
    "BoxFromLabeld",
    "CTWindowD",
    "CTWindowDict",
    "CTWindowd",
    "CheckImageLabelD",
    "CheckImageLabelDict",
    "CheckImageLabeld",
    "EnsureThreeChannelsD",
    "EnsureThreeChannelsDict",
    "EnsureThreeChannelsd",
    "RandSliceD",
    "RandSliceDict",
    "RandSliced",
    "SAMPreprocessD",
    "SAMPreprocessDict",
    "SAMPreprocessd",
    "SAMResizeLongestD",
    "SAMResizeLongestDict",
    "SAMResizeLongestd",
    "SelectLabelsD",
    "SelectLabelsDict",
    "SelectLabelsd",
]


def _source(d: Mapping, key: Hashable) -> str:
    """The file an item came from, for messages."""
    v = d.get(key)
    meta = getattr(v, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return str(v) if isinstance(v, (str, os.PathLike)) else f"<{key}>"


class _ArrayMapd(MapTransform):
    """Applies an array transform to each key; errors name the source file."""

    transform: Any

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.transform(d[key])
            except ValueError as e:
                raise InputError(f"{_source(d, key)}: {e}") from e
        return d


class CTWindowd(_ArrayMapd):
    """Dictionary version of :class:`CTWindow`: ``keys`` first, then the window, ``allow_missing_keys`` last."""

    def __init__(
        self,
        keys: KeysCollection,
        preset: str | None = None,
        width: float | None = None,
        level: float | None = None,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = True,
        dtype=np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CTWindow(preset, width, level, b_min, b_max, clip, dtype)


class EnsureThreeChannelsd(_ArrayMapd):
    """Dictionary version of :class:`EnsureThreeChannels`."""

    def __init__(self, keys: KeysCollection, in_channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = EnsureThreeChannels(in_channels)


class SelectLabelsd(_ArrayMapd):
    """Dictionary version of :class:`SelectLabels`."""

    def __init__(
        self,
        keys: KeysCollection,
        classes=None,
        threshold: float | None = None,
        reduce_channels: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = SelectLabels(classes, threshold, reduce_channels)


class AssembleLabelsd(_ArrayMapd):
    """Dictionary version of :class:`AssembleLabels`."""

    def __init__(
        self,
        keys: KeysCollection,
        values: Sequence[int] | None = None,
        threshold: float = 0.5,
        sigmoid: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = AssembleLabels(values, threshold, sigmoid)


class BoxFromLabeld(MapTransform):
    """Dictionary version of :class:`BoxFromLabel`: writes the boxes of ``keys`` to ``box_keys``.

    Args:
        keys: label keys.
        box_keys: where to write each label's boxes ``(K, 4)``. Default ``"box"``.
        margin: see :class:`BoxFromLabel`. Default 0.
        empty: see :class:`BoxFromLabel`. Default ``"full"``.
        allow_missing_keys: don't raise for missing keys. Default ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_keys: KeysCollection = "box",
        margin: int = 0,
        empty: str = "full",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_keys = ensure_tuple_rep(box_keys, len(self.keys))
        self.transform = BoxFromLabel(margin, empty)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, box_key in self.key_iterator(d, self.box_keys):
            try:
                d[box_key] = self.transform(d[key])
            except ValueError as e:
                raise InputError(f"{_source(d, key)}: {e}") from e
        return d


class SAMResizeLongestd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`SAMResizeLongest`; ``mode`` and ``anti_aliasing`` may differ per key."""

    def __init__(
        self,
        keys: KeysCollection,
        target_size: int,
        slice_axis: int | None = None,
        mode: Sequence[str] | str = "bilinear",
        anti_aliasing: Sequence[bool] | bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.anti_aliasing = ensure_tuple_rep(anti_aliasing, len(self.keys))
        self.resizer = SAMResizeLongest(target_size, slice_axis)

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key, mode, aa in self.key_iterator(d, self.mode, self.anti_aliasing):
            try:
                d[key] = self.resizer(d[key], mode=mode, anti_aliasing=aa, lazy=lazy)
            except ValueError as e:
                raise InputError(f"{_source(d, key)}: {e}") from e
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer.inverse(d[key])
        return d


class _ComposedMapd(MapTransform, InvertibleTransform):
    """A named group of MONAI dictionary transforms that behaves as one: invertible, and ``allow_missing_keys``
    (set by MONAI's ``Invertd``) reaches every member."""

    def __init__(self, keys: KeysCollection, steps: Sequence, allow_missing_keys: bool = False) -> None:
        self.compose = Compose(list(steps))
        super().__init__(keys, allow_missing_keys)

    @property
    def allow_missing_keys(self) -> bool:
        return self._allow_missing_keys

    @allow_missing_keys.setter
    def allow_missing_keys(self, value: bool) -> None:
        self._allow_missing_keys = value
        for t in self.compose.flatten().transforms:
            if isinstance(t, MapTransform):
                t.allow_missing_keys = value

    def __call__(self, data, lazy: bool | None = None):
        return self.compose(data)

    def inverse(self, data):
        return self.compose.inverse(data)


class SAMPreprocessd(_ComposedMapd):
    """A backbone's pre-processing of images (and labels on the same grid), as one invertible MONAI ``Compose``.

    Images: three channels, resize the longest in-plane side to the backbone's input size, the backbone's intensity
    normalisation, pad at the end to a square. Labels: nearest resize and the same padding.
    ``Invertd(keys="pred", transform=<this or a Compose holding it>, orig_keys=<image key>)`` maps predictions back to
    the input grid.

    Args:
        keys: image keys.
        label_keys: label keys resized with ``nearest`` on the same grid. Default ``()``.
        backbone: registry name or spec; gives input size and normalisation. Default ``"lite_medsam"``.
        slice_axis: for 3D volumes, the axis not resized (slices are taken along it). Default ``None`` (2D).
        image_size: override of the backbone's input side (tiny test models). Default ``None``.
        in_channels: input channels of a network with its own channel map (BraTS' four sequences, see
            :class:`SAMPreprocess`). Default 3.
        allow_missing_keys: don't raise for missing keys. Default ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        backbone: str | BackboneSpec = "lite_medsam",
        slice_axis: int | None = None,
        image_size: int | None = None,
        in_channels: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        spec = get_spec(backbone)
        size = int(image_size or spec.image_size)
        keys, label_keys = list(ensure_tuple(keys)), list(ensure_tuple(label_keys))
        if set(keys) & set(label_keys):
            raise ValueError(f"a key cannot be both an image and a label key: {set(keys) & set(label_keys)}.")
        allk = keys + label_keys
        mk = allow_missing_keys
        steps: list = [
            EnsureThreeChannelsd(keys, in_channels, allow_missing_keys=mk),
            SAMResizeLongestd(
                allk,
                size,
                slice_axis,
                mode=["bilinear"] * len(keys) + ["nearest-exact"] * len(label_keys),
                anti_aliasing=[True] * len(keys) + [False] * len(label_keys),
                allow_missing_keys=mk,
            ),
        ]
        steps += [
            getattr(monai.transforms, name + "d")(keys, **kw, allow_missing_keys=mk)
            for name, kw in spec.intensity_steps(in_channels)
        ]
        steps.append(SpatialPadd(allk, _pad_size(size, slice_axis), method="end", allow_missing_keys=mk))
        super().__init__(allk, steps, allow_missing_keys)
        self.spec, self.image_size, self.slice_axis = spec, size, slice_axis


class CheckImageLabeld(MapTransform):
    """Refuse an image/label pair whose grids differ (spatial shape, and affine for 3D), naming both files.

    Args:
        keys: ``(image_key, label_key)``. Default ``("image", "label")``.
        atol: tolerance on affine entries (mm). Default ``1e-3``.
        allow_missing_keys: pass items without a label. Default ``True``.
    """

    def __init__(
        self, keys: KeysCollection = ("image", "label"), atol: float = 1e-3, allow_missing_keys: bool = True
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must be (image_key, label_key), got {self.keys}.")
        self.atol = atol

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ik, lk = self.keys
        if ik not in d or lk not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"CheckImageLabeld needs both {ik!r} and {lk!r}.")
        img, lab = d[ik], d[lk]
        if tuple(img.shape[1:]) != tuple(lab.shape[1:]):
            raise InputError(
                f"label {_source(d, lk)!r} has spatial shape {tuple(lab.shape[1:])} but image "
                f"{_source(d, ik)!r} has {tuple(img.shape[1:])}: they are not on the same grid."
            )
        a, b = getattr(img, "affine", None), getattr(lab, "affine", None)
        if (
            a is not None
            and b is not None
            and len(img.shape) > 3
            and not torch.allclose(
                torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=self.atol
            )
        ):
            raise InputError(
                f"label {_source(d, lk)!r} and image {_source(d, ik)!r} have different affines "
                f"(voxel-to-world geometry):\n{np.asarray(b)}\nvs\n{np.asarray(a)}"
            )
        return d


class RandSliced(_ComposedMapd):
    """Sample 2D slices from 3D volumes for training, foreground-aware, along a chosen axis.

    MONAI's ``RandCropByPosNegLabeld`` with a one-voxel-thick ROI along ``axis`` then ``SqueezeDimd``: each call
    returns ``num_samples`` dictionaries of 2D ``(C, H, W)`` slices.

    Args:
        keys: keys to slice (images and labels).
        label_key: label used to choose foreground slices.
        axis: spatial axis to slice along (2 = axial in RAS/LPS). Default 2.
        num_samples: slices per volume. Default 4.
        pos: relative weight of slices centred on foreground. Default 1.
        neg: relative weight of slices centred on background. Default 1.
        allow_missing_keys: don't raise for missing keys. Default ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        axis: int = 2,
        num_samples: int = 4,
        pos: float = 1.0,
        neg: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}.")
        roi = [-1, -1, -1]
        roi[axis] = 1
        super().__init__(
            keys,
            [
                RandCropByPosNegLabeld(
                    keys,
                    label_key=label_key,
                    spatial_size=roi,
                    pos=pos,
                    neg=neg,
                    num_samples=num_samples,
                    allow_smaller=True,
                    allow_missing_keys=allow_missing_keys,
                ),
                SqueezeDimd(keys, dim=axis + 1, allow_missing_keys=allow_missing_keys),
            ],
            allow_missing_keys,
        )


CTWindowD = CTWindowDict = CTWindowd
EnsureThreeChannelsD = EnsureThreeChannelsDict = EnsureThreeChannelsd
SelectLabelsD = SelectLabelsDict = SelectLabelsd
BoxFromLabelD = BoxFromLabelDict = BoxFromLabeld
SAMResizeLongestD = SAMResizeLongestDict = SAMResizeLongestd
SAMPreprocessD = SAMPreprocessDict = SAMPreprocessd
CheckImageLabelD = CheckImageLabelDict = CheckImageLabeld
RandSliceD = RandSliceDict = RandSliced
AssembleLabelsD = AssembleLabelsDict = AssembleLabelsd
