"""DICOM SEG from our label volumes (highdicom), referencing the source DICOM series.

A label volume from any of our pipelines (a MONAI ``MetaTensor`` with its affine, on the source series' grid or any
other) is sampled at the centre of every pixel of every source instance through the two affines, so the SEG frames
line up with the source images whatever orientation the pipeline worked in. Label values become segment numbers
``1..K`` in the order of ``label_values``, each named after its label.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .errors import InputError
from .io import atomic_write

__all__ = ["SaveDicomSegd", "read_dicom_series", "label_frames", "write_dicom_seg"]

#: SNOMED CT codes (value, meaning) for label names we ship; anything else is coded as "Tissue".
_SCT = {
    "liver": ("10200004", "Liver"),
    "tumor": ("108369006", "Neoplasm"),
    "tumour": ("108369006", "Neoplasm"),
    "polyp": ("41329004", "Polyp"),
    "gland": ("85756007", "Tissue"),
    "edema": ("267038008", "Edema"),
    "necrosis": ("6574001", "Necrosis"),
}


def read_dicom_series(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list:
    """The instances of one DICOM series (a folder, a file, or a list of files), sorted along the slice normal."""
    import pydicom

    paths = [Path(p) for p in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    files = [f for p in paths for f in (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])]
    if not files:
        raise InputError(f"no DICOM files in {[str(p) for p in paths]}.")
    ds = []
    for f in files:
        try:
            d = pydicom.dcmread(f)
        except Exception as e:  # not DICOM: say which file
            raise InputError(f"{str(f)!r} is not a readable DICOM file: {e}") from e
        if "PixelData" in d and "ImagePositionPatient" in d:
            if "SpecificCharacterSet" in d and not d.SpecificCharacterSet:
                del d.SpecificCharacterSet  # empty means the default repertoire; highdicom rejects the empty value
            ds.append(d)
    if not ds:
        raise InputError(f"{[str(p) for p in paths]} holds no DICOM images with a position.")
    series = {d.SeriesInstanceUID for d in ds}
    if len(series) > 1:
        raise InputError(f"{[str(p) for p in paths]} holds {len(series)} series; name one series folder.")
    normal = np.cross(*np.asarray(ds[0].ImageOrientationPatient, float).reshape(2, 3))
    return sorted(ds, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))


def label_frames(label: Any, datasets: Sequence, space: str | None = None) -> np.ndarray:
    """Sample ``label`` (``(X, Y, Z)`` or ``(1, X, Y, Z)`` with ``.affine``; RAS unless ``space``/its meta say LPS) at
    every pixel centre of ``datasets``: ``(frames, rows, columns)``, 0 outside the label volume."""
    arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"expected a single-channel label map, got {arr.shape[0]} channels.")
        arr = arr[0]
    affine = getattr(label, "affine", None)
    if affine is None or arr.ndim != 3:
        raise ValueError("label must be a 3D MetaTensor (with an affine) on the source series' patient space.")
    affine = np.asarray(affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)
    space = space or str(getattr(label, "meta", {}).get("space", "RAS"))
    to_label = np.linalg.inv(affine)
    flip = np.diag([-1.0, -1.0, 1.0]) if space.upper() == "RAS" else np.eye(3)  # DICOM patient space is LPS
    frames = []
    for d in datasets:
        rows, cols = int(d.Rows), int(d.Columns)
        row_dir, col_dir = np.asarray(d.ImageOrientationPatient, float).reshape(2, 3)
        dr, dc = (float(v) for v in d.PixelSpacing)  # between rows, between columns
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        world = (
            np.asarray(d.ImagePositionPatient, float)[:, None]
            + np.outer(row_dir, c.ravel() * dc)
            + np.outer(col_dir, r.ravel() * dr)
        )
        vox = to_label[:3, :3] @ (flip @ world) + to_label[:3, 3:4]
        idx = np.rint(vox).astype(int)
        inside = np.all((idx >= 0) & (idx < np.asarray(arr.shape)[:, None]), axis=0)
        out = np.zeros(rows * cols, dtype=arr.dtype)
        out[inside] = arr[idx[0, inside], idx[1, inside], idx[2, inside]]
        frames.append(out.reshape(rows, cols))
    return np.stack(frames)


def _as_volume(label: Any) -> Any:
    """A channel-first label of a MONAI pipeline, ``(1, X, Y)`` (a 2D image such as one DICOM slice) or
    ``(1, X, Y, Z)``, as the ``(X, Y, Z)`` MetaTensor with a 4x4 affine that :func:`label_frames` samples."""
    from monai.data import MetaTensor

    t = torch.as_tensor(label)[0]
    affine = torch.as_tensor(getattr(label, "affine", torch.eye(4)), dtype=torch.float64)
    if t.ndim == 2:
        t = t[..., None]
        if affine.shape == (3, 3):  # a 2D affine: the slice lies in z = 0
            full = torch.eye(4, dtype=torch.float64)
            full[:2, :2], full[:2, 3] = affine[:2, :2], affine[:2, 2]
            affine = full
    meta = dict(getattr(label, "meta", {}) or {})
    meta["affine"] = affine
    return MetaTensor(t, affine=affine, meta=meta)


def write_dicom_seg(
    label: Any,
    source: str | os.PathLike | Sequence,
    filename: str | os.PathLike,
    label_names: Sequence[str],
    label_values: Sequence[int] | None = None,
    algorithm: str = "monai_sam_adapt",
    series_description: str = "monai_sam_adapt segmentation",
    algorithm_type: str = "automatic",
) -> Path:
    """Write ``label`` as a DICOM SEG (binary, one segment per label) referencing the ``source`` series; atomic.

    Args:
        label: label map with its affine (see :func:`label_frames`).
        source: the DICOM series the label was computed on (folder, file or list of files).
        filename: output ``.dcm``.
        label_names: segment labels, in ``label_values`` order.
        label_values: the label value of each name. Default ``1..K``.
        algorithm_type: ``"automatic"``, ``"semiautomatic"`` (edited in a viewer) or ``"manual"``.
    """
    import highdicom as hd
    from pydicom.sr.coding import Code

    import monai_sam_adapt

    kind = hd.seg.SegmentAlgorithmTypeValues[algorithm_type.upper()]
    values = list(label_values) if label_values is not None else list(range(1, len(label_names) + 1))
    if len(values) != len(label_names):
        raise ValueError(f"{len(label_names)} label names but {len(values)} label values.")
    datasets = read_dicom_series(source)
    frames = label_frames(label, datasets)
    seg_numbers = np.zeros(frames.shape, dtype=np.uint8)
    for i, v in enumerate(values, start=1):
        seg_numbers[frames == v] = i
    unknown = sorted(set(np.unique(frames).tolist()) - {0, *values})
    if unknown:
        raise ValueError(f"label values {unknown} have no name (named: {dict(zip(values, label_names))}).")
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm, version=monai_sam_adapt.__version__, family=Code("113112", "DCM", "Artificial Intelligence")
    )
    descriptions = []
    for i, name in enumerate(label_names, start=1):
        value, meaning = _SCT.get(name.lower(), ("85756007", "Tissue"))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=i,
                segment_label=name,
                segmented_property_category=Code("91723000", "SCT", "Anatomical Structure"),
                segmented_property_type=Code(value, "SCT", meaning),
                algorithm_type=kind,
                algorithm_identification=None if kind.value == "MANUAL" else algo,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=seg_numbers,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="monai_sam_adapt",
        manufacturer_model_name=algorithm,
        software_versions=monai_sam_adapt.__version__,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=False,
    )
    with atomic_write(filename) as tmp:
        seg.save_as(tmp)
    return Path(filename)


class SaveDicomSegd(MapTransform):
    """Post-processing step: write each label map under ``keys`` as ``<output_dir>/<series name>_seg.dcm``, a DICOM
    SEG referencing the DICOM series it was computed on (the ``source_key`` item's file name, e.g. ``"image"``).

    Args:
        keys: label maps (after ``Invertd`` and ``AssembleLabelsd``, on the source grid).
        output_dir: output folder.
        label_names / label_values: segment names and their label values.
        source_key: the key whose ``meta["filename_or_obj"]`` is the DICOM series. Default ``"image"``.
        overwrite: replace an existing SEG file; otherwise it is refused with :class:`InputError`. Default ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        label_names: Sequence[str],
        label_values: Sequence[int] | None = None,
        source_key: str = "image",
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.overwrite = bool(overwrite)
        self.output_dir, self.names, self.values, self.source_key = (
            Path(output_dir),
            label_names,
            label_values,
            source_key,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        src = d[self.source_key]
        source = src if isinstance(src, (str, os.PathLike)) else getattr(src, "meta", {}).get("filename_or_obj")
        if not source:
            raise InputError(f"{self.source_key!r} has no source file name to reference in the DICOM SEG.")
        name = Path(str(source).rstrip("/")).name.split(".")[0]
        for key in self.key_iterator(d):
            suffix = "_seg" if key == self.first_key(d) else f"_{key}_seg"
            out = self.output_dir / f"{name}{suffix}.dcm"
            if out.exists() and not self.overwrite:
                raise InputError(
                    f"DICOM SEG {str(out)!r} (for {str(source)!r}) already exists; nothing was overwritten. "
                    "Choose another output_dir, or pass --overwrite true to replace it."
                )
            write_dicom_seg(
                _as_volume(d[key]), source, self.output_dir / f"{name}{suffix}.dcm", self.names, self.values
            )
        return d
