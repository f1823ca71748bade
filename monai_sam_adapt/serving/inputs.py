"""A request's files as our pipelines read them: errors MONAI Label answers with a 4xx naming the file."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor

from ..errors import InputError, find_error
from ..transforms.io import LoadMedicalImaged
from .errors import RequestError

__all__ = ["device_for", "image_shape", "input_error", "read_input", "single_output"]


def input_error(e: BaseException) -> InputError | None:
    """The :class:`InputError` (unreadable or mismatched input file) behind an exception, if any."""
    return find_error(e, (InputError,))  # type: ignore[return-value]


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


_DEVICE = re.compile(r"^(cpu|cuda(:[0-9]{1,2})?)$")


def device_for(requested: Any) -> torch.device:
    """The torch device a request asks for (``cpu``, ``cuda``, ``cuda:N``; a 400 otherwise); CUDA without a GPU
    falls back to the CPU. The name is checked before it goes anywhere near a bundle config expression."""
    name = str(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not _DEVICE.match(name):
        raise RequestError(f"parameter 'device': {name[:40]!r} is not a device (cpu, cuda or cuda:N).", 400)
    if name.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(name)


def single_output(folder: Path, suffix: str) -> str:
    """Move the one file an evaluator wrote under ``folder`` to a temporary file MONAI Label will delete."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    if len(files) != 1:
        raise RuntimeError(f"expected one prediction file under {folder}, found {[str(f) for f in files]}.")
    fd, out = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    shutil.move(str(files[0]), out)
    return out
