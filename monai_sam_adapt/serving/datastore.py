"""MONAI Label datastores that check what they are given and write DICOM SEG with highdicom."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm
from monailabel.interfaces.datastore import DefaultLabelTag

from ..dicom_seg import write_dicom_seg
from .errors import RequestError
from .guard import check_name, confined, inside, upload_root
from .inputs import image_shape, read_input

__all__ = ["CheckedDatastoreMixin", "CheckedLocalDatastore", "SegDICOMWebDatastore", "label_names_of"]

logger = logging.getLogger(__name__)


def label_names_of(values: list[int], info: dict[str, Any], known: dict[str, int]) -> list[str]:
    """A name for every label value: from the request's ``label_names`` ({name: value}, as our models return) or
    ``label_info`` ([{"name", "idx"}], as OHIF sends), else the served models' labels, else ``"label <value>"``."""
    by_value = {int(v): n for n, v in known.items()}
    params = info.get("params") if isinstance(info.get("params"), dict) else {}
    for source in (params.get("label_names"), info.get("label_names")):
        if isinstance(source, dict):
            by_value.update({int(v): str(n) for n, v in source.items()})
    for i, item in enumerate(info.get("label_info") or [], start=1):
        if isinstance(item, dict) and item.get("name"):
            by_value[int(item.get("idx", i))] = str(item["name"])
    return [by_value.get(v, f"label {v}") for v in values]


class CheckedDatastoreMixin:
    """Refuse, with a 4xx naming the parameter or file: an id or tag that is not a plain name or whose file would
    resolve outside the datastore's folder (symbolic links included), an image that cannot be read, a label not on
    its image's grid. Nothing is written, read or deleted outside the datastore's folder."""

    def _inside(self, path: str, param: str) -> str:
        """``path`` (a file this datastore built from a request's id) if it lies inside the datastore's folder, or
        is a file the server converted for this request (a DICOM series as NIfTI, in the request's upload folder)."""
        if path and not inside(path, upload_root()):
            confined(self._datastore_path, path, param=param)  # type: ignore[attr-defined]
        return path

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        name = image_id or self._to_id(os.path.basename(image_filename))[0]  # type: ignore[attr-defined]
        check_name(name, "image" if image_id else "file")
        read_input(image_filename, f"image upload {name!r}")
        ext = self._to_id(os.path.basename(image_filename))[1]  # type: ignore[attr-defined]
        confined(self._datastore.image_path(), name + ext, param="image")  # type: ignore[attr-defined]
        return super().add_image(name, image_filename, image_info)  # type: ignore[misc]

    def remove_image(self, image_id: str) -> None:
        self.get_image_uri(image_id)  # checked
        return super().remove_image(image_id)  # type: ignore[misc]

    def get_image_uri(self, image_id: str) -> str:
        check_name(image_id, "image")
        return self._inside(super().get_image_uri(image_id), "image")  # type: ignore[misc]

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        return super().get_image_info(check_name(image_id, "image"))  # type: ignore[misc]

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        return super().update_image_info(check_name(image_id, "image"), info)  # type: ignore[misc]

    def get_label_uri(self, label_id: str, label_tag: str, *args: Any) -> str:
        check_name(label_id, "label")
        check_name(label_tag, "tag")
        return self._inside(super().get_label_uri(label_id, label_tag, *args), "label")  # type: ignore[misc]

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        check_name(label_id, "label")
        check_name(label_tag, "tag")
        return super().get_label_info(label_id, label_tag)  # type: ignore[misc]

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        check_name(label_id, "label")
        check_name(label_tag, "tag")
        return super().update_label_info(label_id, label_tag, info)  # type: ignore[misc]

    def remove_label(self, label_id: str, label_tag: str) -> None:
        self.get_label_uri(label_id, label_tag)  # checked
        return super().remove_label(label_id, label_tag)  # type: ignore[misc]

    def check_label(self, image_id: str, label_filename: str):
        """The label as loaded, after checking it is readable, single-channel and on the image's grid."""
        image_uri = self.get_image_uri(image_id)  # checked
        if not image_uri:
            raise RequestError(f"image {image_id!r} is not in the datastore: save its label after adding it.", 404)
        label = read_input(label_filename, f"label for image {image_id!r}")
        grid = image_shape(image_uri, f"image {image_id!r}")[1:]
        if label.shape[0] != 1 or tuple(label.shape[1:]) != grid:
            raise RequestError(
                f"label for image {image_id!r} has shape {tuple(label.shape)}; the image is "
                f"{grid}: a label must be one channel on the image's grid.",
                400,
            )
        return label

    def check_label_target(self, image_id: str, label_filename: str, label_tag: str) -> None:
        """Where the label would be written must be inside the datastore's labels folder."""
        check_name(image_id, "image")
        check_name(label_tag, "tag")
        ext = self._to_id(os.path.basename(label_filename))[1]  # type: ignore[attr-defined]
        labels = self._datastore.label_path(None)  # type: ignore[attr-defined]
        confined(labels, label_tag, param="tag")
        confined(labels, label_tag, image_id + ext, param="image")

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        self.check_label_target(image_id, label_filename, label_tag)
        if not label_filename.endswith(".bin"):  # OHIF's raw buffers are converted by MONAI Label itself
            self.check_label(image_id, label_filename)
        return super().save_label(image_id, label_filename, label_tag, label_info)  # type: ignore[misc]


class CheckedLocalDatastore(CheckedDatastoreMixin, LocalDatastore):
    """MONAI Label's folder datastore, checking uploads and labels."""


class SegDICOMWebDatastore(CheckedDatastoreMixin, DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore whose final labels go to the archive as DICOM SEG written by highdicom
    (:func:`monai_sam_adapt.dicom_seg.write_dicom_seg`), referencing the source series, geometry sampled through the
    label's affine; no dcmqi download and no ``pydicom-seg`` writer.

    Args:
        labels: ``{name: value}`` of the served models, to name segments a request leaves unnamed.
        kwargs: :class:`monailabel.datastore.dicom.DICOMWebDatastore`'s.
    """

    def __init__(self, *args: Any, labels: dict[str, int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = dict(labels or {})

    def json(self) -> dict[str, Any]:
        """The datastore listing: every series of the archive (QIDO), with what the local cache knows of it."""
        out = super().json()
        objects = out.setdefault("objects", {})
        for series in self.list_images():
            objects.setdefault(series, {"image": {"info": {"SeriesInstanceUID": series}}, "labels": {}})
        return out

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        if label_tag != DefaultLabelTag.FINAL or label_filename.endswith(".bin"):
            return super().save_label(image_id, label_filename, label_tag, label_info)
        self.check_label_target(image_id, label_filename, label_tag)
        label = self.check_label(image_id, label_filename)
        values = sorted(int(v) for v in set(label.unique().tolist()) - {0})
        names = label_names_of(values, label_info, self.labels)
        series_dir = str(confined(self._datastore.image_path(), image_id, param="image"))
        with tempfile.TemporaryDirectory() as tmp:
            seg = write_dicom_seg(
                label,
                series_dir,
                Path(tmp) / "seg.dcm",
                names,
                values,
                algorithm_type="semiautomatic" if label_info.get("model") is None else "automatic",
            )
            seg_series = dicom_web_upload_dcm(str(seg), self._client)
        info = self.get_image_info(image_id)
        label_info = {
            **label_info,
            "SeriesInstanceUID": seg_series,
            "Modality": info.get("Modality"),
            "PatientID": info.get("PatientID"),
            "StudyInstanceUID": info.get("StudyInstanceUID"),
            "label_names": dict(zip(names, values)),
        }
        logger.info(f"DICOM SEG {seg_series} for series {image_id}: segments {dict(zip(names, values))}")
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
