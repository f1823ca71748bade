"""Writing files that are never left half-written (:func:`atomic_write`, the one place that does it), image writers
built on it (PNG masks in the orientation we load them), and where predictions go (:class:`ConfinedFolderLayout`:
inside the output folder, never over an existing file)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monai.data import FolderLayout, ITKWriter, NibabelWriter, PILWriter

from .errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "SUFFIXES_2D",
    "AtomicITKWriter",
    "AtomicNibabelWriter",
    "ConfinedFolderLayout",
    "PILMaskWriter",
    "atomic_write",
    "image_stem",
    "remove_stale_partials",
]

#: 2D image formats (read rows first by MONAI's ``PILReader``), and every image format we read.
SUFFIXES_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES = SUFFIXES_2D + (".nii", ".nii.gz", ".nrrd", ".dcm", ".npy", ".npz")


@contextmanager
def atomic_write(filename: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``filename`` (same extensions, so writers pick the same format) to write
    to; on success it replaces ``filename`` in one rename, on any error it is removed: a crash never leaves a
    truncated or partial output. Parent folders are created.

    Example::

        with atomic_write("out/overlays.png") as tmp:
            fig.savefig(tmp)
    """
    out = Path(filename)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".partial-{os.getpid()}-{out.name}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_partials(folder: str | os.PathLike, max_entries: int = 200_000) -> list[Path]:
    """Remove the temporary files that :func:`atomic_write` left under ``folder`` in a process that no longer runs
    (killed with SIGKILL, or a power cut: a SIGTERM'd bundle run cleans up after itself). Files of live processes are
    left alone; at most ``max_entries`` directory entries are looked at (an output folder pointed at a large tree is
    not crawled whole). Returns the removed paths."""
    removed: list[Path] = []
    seen = 0
    for root, dirs, files in os.walk(folder):
        seen += len(files) + len(dirs)
        for name in files:
            pid = name.split("-")[1] if name.startswith(".partial-") and name.count("-") >= 2 else ""
            if not pid.isdigit() or _alive(int(pid)):
                continue
            try:
                os.unlink(os.path.join(root, name))
                removed.append(Path(root) / name)
            except OSError:
                pass
        if seen > max_entries:
            break
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _AtomicWriteMixin:
    """A MONAI image writer whose ``write`` goes through :func:`atomic_write`."""

    def write(self, filename, verbose: bool = False, **kwargs):
        with atomic_write(filename) as tmp:
            super().write(str(tmp), verbose=verbose, **kwargs)  # type: ignore[misc]


class PILMaskWriter(_AtomicWriteMixin, PILWriter):
    """MONAI's ``PILWriter`` for ``(H, W)`` arrays loaded by :class:`~monai_sam_adapt.transforms.LoadMedicalImaged`
    (rows first, no axis swap), written atomically."""

    def write(self, filename, verbose: bool = False, **kwargs):
        kwargs.setdefault("reverse_indexing", False)
        return super().write(filename, verbose=verbose, **kwargs)


class AtomicNibabelWriter(_AtomicWriteMixin, NibabelWriter):
    """MONAI's ``NibabelWriter`` (NIfTI), written atomically."""


class AtomicITKWriter(_AtomicWriteMixin, ITKWriter):
    """MONAI's ``ITKWriter`` (NRRD, MHA, ... when ``itk`` is installed), written atomically."""


def image_stem(path: str | os.PathLike) -> str:
    """A file's name without its image extension (``case.nii.gz`` -> ``case``); a folder's (DICOM series) name."""
    path = Path(path)
    name = path.name
    for ext in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem if path.suffix and not path.is_dir() else name


class ConfinedFolderLayout(FolderLayout):
    """MONAI's ``FolderLayout`` for predictions that never land outside ``output_dir`` and never overwrite a file.

    An input inside ``data_root_dir`` keeps its relative folder (``x/case.jpg`` and ``y/case.jpg`` give ``x/case.png``
    and ``y/case.png``); an input outside it (an absolute path or ``../`` in the datalist) is written directly under
    ``output_dir`` with a short hash of its full path in the name, so that it cannot collide and cannot escape. An
    existing output file (a previous run, or an expert label in a folder given as ``output_dir``) raises
    :class:`~monai_sam_adapt.errors.InputError` naming it unless ``overwrite`` is true.

    Args:
        output_dir: the only folder written to.
        postfix: appended to the input's name (e.g. ``"seg"`` -> ``case_seg.nii.gz``). Default ``""``.
        extension: output extension, e.g. ``".nii.gz"``. Default ``""``.
        data_root_dir: the dataset folder whose sub-folders are kept. Default ``""`` (names only).
        overwrite: replace existing outputs. Default ``False``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        postfix: str = "",
        extension: str = "",
        data_root_dir: str | os.PathLike = "",
        overwrite: bool = False,
    ) -> None:
        super().__init__(str(output_dir), postfix=postfix, extension=extension, parent=False, makedirs=False)
        self.root = Path(data_root_dir).resolve() if data_root_dir else None
        self.overwrite = bool(overwrite)
        self._writable: set[Path] = set()
        remove_stale_partials(output_dir)

    def filename(self, subject: Any = "subject", idx: Any = None, **kwargs: Any) -> str:
        out_dir = Path(self.output_dir).resolve()
        src = Path(str(subject))
        parent = Path()
        name = image_stem(src)
        full = src.resolve()
        if self.root is not None and full.is_relative_to(self.root):
            parent = full.parent.relative_to(self.root)
        elif src.is_absolute() or ".." in src.parts or self.root is not None:
            name = f"{name}-{hashlib.sha1(str(full).encode()).hexdigest()[:8]}"  # outside the dataset: unique here
        name += f"_{self.postfix}" if self.postfix else ""
        name += f"_{idx}" if idx is not None else ""
        for k, v in kwargs.items():
            name += f"_{k}-{v}"
        ext = str(self.ext or "")
        out = out_dir / parent / (name + (f".{ext}" if ext and not ext.startswith(".") else ext))
        if not out.resolve().is_relative_to(out_dir):
            raise InputError(f"output for {str(subject)!r} would be written outside output_dir {str(out_dir)!r}.")
        if out.exists() and not self.overwrite:
            raise InputError(
                f"output {str(out)!r} (for input {str(subject)!r}) already exists; nothing was overwritten. "
                "Choose another output_dir, or pass --overwrite true to replace it."
            )
        self._check_writable(out.parent)
        return str(out)

    def _check_writable(self, folder: Path) -> None:
        """Create ``folder`` and try a file in it once: an unwritable output folder is named up front, not reported
        by MONAI as missing writer libraries after the work is done."""
        if folder in self._writable:
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=f".partial-{os.getpid()}-probe"):
                pass
        except OSError as e:
            raise InputError(
                f"cannot write predictions into {str(folder)!r} ({type(e).__name__}: {e.strerror or e}); choose "
                "another --output_dir."
            ) from None
        self._writable.add(folder)
