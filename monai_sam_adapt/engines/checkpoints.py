"""Training checkpoints that a crash cannot corrupt, and resuming that says which file is bad and which is good.

MONAI's ``CheckpointSaver`` writes with ignite's ``DiskSaver(atomic=False)``: a kill during a save leaves a truncated
file, and with ``n_saved=1`` it can be the only checkpoint. :class:`AtomicCheckpointSaver` writes every file to a
temporary file in the same folder and renames it, so the previous checkpoint is removed only once the new one is
complete. :class:`ResumeCheckpointLoader` checks the file before training starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import min_version, optional_import

from ..errors import CheckpointError

DiskSaver, _ = optional_import("ignite.handlers", "0.4.11", min_version, "DiskSaver")

__all__ = ["AtomicCheckpointSaver", "ResumeCheckpointLoader"]


class _AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` with ``atomic=True`` and, like MONAI's, an optional fixed file name. Ignite removes the
    checkpoint to drop *before* it writes the new one; here the removal waits until the new file is complete."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self._to_remove: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        super().__call__(checkpoint=checkpoint, filename=name, metadata=metadata)
        for old in self._to_remove:  # only now that the new one is complete
            if old != name:
                super().remove(filename=old)
        self._to_remove.clear()

    def remove(self, filename: str) -> None:
        self._to_remove.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are written atomically: a kill during a save leaves
    the previous checkpoint intact and no truncated file under the final name."""

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        fixed = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": None,
        }
        for attr, filename in fixed.items():
            checkpoint = getattr(self, attr, None)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(str(save_dir), filename)


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` for ``--resume_from``, which first reads the file: a missing, truncated or foreign
    file raises :class:`~monai_sam_adapt.errors.CheckpointError` naming it, what it lacks, and the newest complete
    checkpoint in the same folder to resume from instead."""

    def attach(self, engine) -> None:
        path = Path(self.load_path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = [k for k in self.load_dict if not isinstance(state, Mapping) or k not in state]
        except Exception as e:  # noqa: BLE001 - reported with the file's name
            state, missing = None, [f"a readable checkpoint ({type(e).__name__}: {str(e)[:200]})"]
        if missing:
            good = self._newest_good(path)
            hint = f" The newest complete checkpoint there is {str(good)!r}." if good else ""
            raise CheckpointError(
                f"resume_from {str(path)!r} cannot be resumed from: it lacks {', '.join(map(str, missing))}.{hint}"
            )
        super().attach(engine)

    def _newest_good(self, bad: Path) -> Path | None:
        folder = bad.parent if bad.parent.is_dir() else None
        if folder is None:
            return None
        for p in sorted(folder.glob("*.pt"), key=os.path.getmtime, reverse=True):
            if p.resolve() == bad.resolve():
                continue
            try:
                state = torch.load(p, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - not a good one
                continue
            if isinstance(state, Mapping) and all(k in state for k in self.load_dict):
                return p
        return None
