"""Loading images the way our pipelines expect, with errors that name the file (MONAI keeps its loaders in
``monai.transforms.io``; these are ``LoadImage`` / ``LoadImaged`` with a fixed reader per format)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import ImageReader, NibabelReader, NrrdReader, NumpyReader, PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform
from monai.utils import ensure_tuple

from ..errors import InputError
from ..io import SUFFIXES_2D

__all__ = [
    "NON_IMAGE_MODALITIES",
    "LoadMedicalImage",
    "LoadMedicalImageD",
    "LoadMedicalImageDict",
    "LoadMedicalImaged",
    "check_dicom_series",
]


class LoadMedicalImage(LoadImage):
    """MONAI's ``LoadImage`` with one reader per format, whatever else is installed, and errors naming the file.

    - 2D files (png, jpg, bmp, tif) load as ``(C, H, W)``: rows first, as the image is seen and as SAM was trained
      (MONAI's ``PILReader(reverse_indexing=False)``; its default swaps the axes); write such masks with
      :class:`monai_sam_adapt.io.PILMaskWriter`.
    - NIfTI (nibabel), NRRD (pynrrd), ``.npy``/``.npz``, and DICOM (a series folder, or a file; pydicom). MONAI would
      prefer ITK when it is installed (MONAI Label brings it), and ITK reads a DICOM series differently and passes
      over a truncated slice: here the reader never depends on what else is installed.

    ``ensure_channel_first`` defaults to ``True`` and only the image (a MetaTensor with its geometry) is returned. A
    missing file, an empty folder, an unreadable or corrupt file, or a corrupt slice of a DICOM series raises
    :class:`~monai_sam_adapt.errors.InputError` naming it.

    Voxels that are not finite (NaN, Inf) would spread through every normalisation to the whole image and blank the
    result without a word: by default they are refused with the file and their count.

    What a bundle declares is checked here, where the file is known: ``channels`` (a 4-channel Decathlon-style NIfTI
    would otherwise be read as RGBA, a 3-channel one given for FLAIR would run) and ``spatial_dims`` (a 2D image or
    a single DICOM slice given to a 3D bundle, a volume given to a 2D one).

    Args:
        what: how the file is named in messages (e.g. ``"image"``, ``"label"``). Default ``"image"``.
        nonfinite: ``"error"`` (refuse), or ``"zero"`` (replace them by 0, with a warning). Default ``"error"``.
        channels: accepted channel counts of each file (an int or a list), or ``None`` for any. When several files
            make one image (one per modality), each must have one of these counts. Default ``None``.
        channel_names: the channels the image is made of (e.g. BraTS' ``["flair", "t1", "t1ce", "t2"]``), or
            ``None``: then the image is one file per name (each with ``channels``), or one file carrying them all in
            this order (how MONAI Label and a 4D NIfTI hand them over); any other count is refused. Default ``None``.
        spatial_dims: 2 or 3 to refuse images of the other dimensionality, or ``None``. Default ``None``.
        kwargs: passed to MONAI's ``LoadImage``.
    """

    def __init__(
        self,
        what: str = "image",
        ensure_channel_first: bool = True,
        nonfinite: str = "error",
        channels: int | Sequence[int] | None = None,
        spatial_dims: int | None = None,
        channel_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if nonfinite not in ("error", "zero"):
            raise ValueError(f"nonfinite must be 'error' or 'zero', got {nonfinite!r}.")
        if spatial_dims not in (None, 2, 3):
            raise ValueError(f"spatial_dims must be 2, 3 or None, got {spatial_dims!r}.")
        super().__init__(image_only=True, ensure_channel_first=ensure_channel_first, **kwargs)
        self.what, self.nonfinite, self.spatial_dims = what, nonfinite, spatial_dims
        self.channels = None if channels is None else sorted({int(c) for c in ensure_tuple(channels)})
        self.channel_names = None if channel_names is None else [str(n) for n in channel_names]
        self.readers_by_format: dict[str, ImageReader] = {
            "2d": PILReader(reverse_indexing=False),
            "nifti": NibabelReader(),
            "nrrd": NrrdReader(),
            "numpy": NumpyReader(),
            "dicom": PydicomReader(),
        }

    def reader_for(self, filename: Any) -> ImageReader | None:
        """The reader of ``filename`` by its form (folder: DICOM series) and suffix; ``None`` leaves MONAI's choice."""
        name = str(filename[0] if isinstance(filename, (list, tuple)) else filename).lower()
        if os.path.isdir(name) or name.endswith(".dcm") or not Path(name).suffix:
            return self.readers_by_format["dicom"]
        for fmt, suffixes in (
            ("2d", SUFFIXES_2D),
            ("nifti", (".nii", ".nii.gz")),
            ("nrrd", (".nrrd", ".nhdr")),
            ("numpy", (".npy", ".npz")),
        ):
            if name.endswith(suffixes):
                return self.readers_by_format[fmt]
        return None

    def __call__(self, filename: Any, reader: ImageReader | None = None):
        for path in filename if isinstance(filename, (list, tuple)) else [filename]:
            if isinstance(path, (str, os.PathLike)):
                if not os.path.exists(path):
                    raise InputError(f"{self.what} file {str(path)!r} does not exist.")
                if os.path.isdir(path) and not any(Path(path).iterdir()):
                    raise InputError(f"{self.what} folder {str(path)!r} is empty (expected a DICOM series).")
        chosen = reader or self.reader_for(filename)
        if chosen is self.readers_by_format["dicom"] and isinstance(filename, (str, os.PathLike)):
            check_dicom_series(filename, self.what)
        try:
            img = super().__call__(filename, chosen)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"cannot read {self.what} file {str(filename)!r}: {_explain(filename, e)}") from e
        if img.is_floating_point():
            bad = ~torch.isfinite(img)
            count = int(bad.sum())
            if count and self.nonfinite == "error":
                raise InputError(
                    f"{self.what} file {str(filename)!r} has {count} non-finite voxels (NaN or Inf) of {img.numel()}; "
                    "they would blank the whole result. Fix the file, or load with nonfinite='zero' to replace them."
                )
            if count:
                warnings.warn(
                    f"{self.what} file {str(filename)!r}: {count} non-finite voxels replaced by 0.", stacklevel=2
                )
                img = img.masked_fill(bad, 0)
        self._check_shape(filename, img)
        return img

    def _check_shape(self, filename: Any, img: torch.Tensor) -> None:
        """Refuse an image whose channel count or dimensionality the bundle does not take, naming the file."""
        files = list(filename) if isinstance(filename, (list, tuple)) else [filename]
        dims, chans = img.ndim - 1, img.shape[0]
        if len(files) > 1 and self.spatial_dims is not None and dims == self.spatial_dims + 1:
            chans = -1  # MONAI stacked multi-channel files on a new axis: each file has channels of its own
        elif self.spatial_dims is not None and dims != self.spatial_dims:
            got = {2: "2D (a single slice or a planar image)", 3: "3D"}.get(dims, f"{dims}D")
            need = "a 3D volume (a DICOM series folder, a 3D NIfTI/NRRD)" if self.spatial_dims == 3 else "a 2D image"
            raise InputError(
                f"{self.what} file {str(filename)!r} is {got} with shape {tuple(img.shape[1:])}; this bundle needs "
                f"{need}."
            )
        names = self.channel_names
        if names is not None:
            if len(files) == 1 and chans == len(names):
                return  # one file with every channel, in order
            if len(files) != len(names):
                has = f"{len(files)} files" if len(files) > 1 else f"one file with {chans} channel(s)"
                raise InputError(
                    f"{self.what} {str(filename)!r} is {has}; this bundle reads the {len(names)} channels "
                    f"{', '.join(names)}: one file each, or one file carrying all {len(names)} in this order."
                )
        per_file = chans // len(files) if chans > 0 and chans % len(files) == 0 else None
        if self.channels is not None and per_file not in self.channels:
            what = " or ".join(map(str, self.channels))
            has = f"has {per_file} channels" if per_file else "has several channels per file"
            raise InputError(
                f"{self.what} file {str(filename)!r} {has}; this bundle reads {what} per file (a multi-channel "
                "volume is not split into modalities: give one file per modality, as the bundle's datalist lists them)."
            )


#: DICOM objects that are not images to segment: segmentations, structure sets, reports, plans, presentation states.
NON_IMAGE_MODALITIES = ("SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG")


def check_dicom_series(path: str | os.PathLike, what: str = "image") -> None:
    """Refuse, naming the file, a DICOM folder (or file) that MONAI's reader would read wrongly without a word: a file
    that is not DICOM (an empty or stray file is otherwise skipped, and the slice spacing comes out wrong), a DICOM
    object that is not an image (a SEG, RTSTRUCT, SR...: segmenting a DICOM SEG as a CT), several series in one
    folder, or slices that are not evenly spaced (a missing slice)."""
    import numpy as np
    import pydicom

    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    where = f"{what} {'folder' if path.is_dir() else 'file'} {str(path)!r}"
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - reported with the file
            raise InputError(f"{where}: {str(f)!r} is not a DICOM file ({type(e).__name__}: {str(e)[:200]}).") from e
        modality = str(ds.get("Modality", "")).upper()
        if modality in NON_IMAGE_MODALITIES or "Rows" not in ds:  # pixels are not read here: Rows marks an image
            raise InputError(
                f"{where}: {str(f)!r} is a DICOM {modality or 'object'} without an image to segment (Modality "
                f"{modality!r}); give the image series it refers to."
            )
        headers.append(ds)
    series = {str(d.get("SeriesInstanceUID", "")) for d in headers}
    if len(series) > 1:
        raise InputError(f"{where} holds {len(series)} series; give one series per folder.")
    if len(headers) > 2 and all("ImagePositionPatient" in d and "ImageOrientationPatient" in d for d in headers):
        normal = np.cross(*np.asarray(headers[0].ImageOrientationPatient, float).reshape(2, 3))
        z = np.sort([float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))) for d in headers])
        gaps = np.diff(z)
        if gaps.min() <= 1e-4 or gaps.max() - gaps.min() > 0.01 * max(gaps.max(), 1e-6) + 1e-3:
            raise InputError(
                f"{where}: slices are not evenly spaced (gaps {np.unique(np.round(gaps, 3)).tolist()} mm): a slice is "
                "missing or duplicated."
            )


def _explain(path: Any, e: Exception) -> str:
    """Say which slice of a DICOM folder is broken, when a series fails to load."""
    msg = f"{type(e).__name__}: {e}".strip()
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        import pydicom

        for f in sorted(Path(path).iterdir()):
            try:
                ds = pydicom.dcmread(f)
                _ = ds.pixel_array
            except Exception as fe:  # noqa: BLE001 - reported to the user
                return f"slice {str(f)!r} is not a readable DICOM image ({type(fe).__name__}: {fe})"
    return msg.splitlines()[0][:500]


class LoadMedicalImaged(MapTransform):
    """Dictionary version of :class:`LoadMedicalImage`: each key's file is loaded in place (its geometry and file
    name travel in the MetaTensor's ``.meta`` / ``.affine``).

    Args:
        keys: keys of the file names to load.
        ensure_channel_first: Default ``True``.
        channels: ``{key: accepted channel counts}`` (see :class:`LoadMedicalImage`), e.g. ``{"image": 3}``; keys
            not named take any. Default ``None``.
        channel_names: ``{key: names of the channels}`` (see :class:`LoadMedicalImage`), e.g.
            ``{"image": ["flair", "t1", "t1ce", "t2"]}``; a ``None`` value, or a key not named: no names.
            Default ``None``.
        allow_missing_keys: Default ``False``.
        kwargs: passed to :class:`LoadMedicalImage` (``spatial_dims`` applies to every key).
    """

    def __init__(
        self,
        keys: KeysCollection,
        ensure_channel_first: bool = True,
        channels: Mapping[Hashable, int | Sequence[int]] | None = None,
        allow_missing_keys: bool = False,
        channel_names: Mapping[Hashable, Sequence[str] | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        channels, channel_names = dict(channels or {}), dict(channel_names or {})
        for arg, given in (("channels", channels), ("channel_names", channel_names)):
            unknown = set(given) - set(self.keys)
            if unknown:
                raise ValueError(f"{arg} names keys {sorted(map(str, unknown))} that are not loaded ({self.keys}).")
        self.loaders = {
            k: LoadMedicalImage(
                str(k),
                ensure_channel_first=ensure_channel_first,
                channels=channels.get(k),
                channel_names=channel_names.get(k),
                **kwargs,
            )
            for k in self.keys
        }

    def __call__(self, data, reader: ImageReader | None = None):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loaders[key](d[key], reader)
        return d


LoadMedicalImageD = LoadMedicalImageDict = LoadMedicalImaged
