"""Training checkpoints that a crash cannot corrupt, and resuming that says which file is bad and which is good.

MONAI's ``CheckpointSaver`` writes with ignite's ``DiskSaver(atomic=False)``: a kill during a save leaves a truncated
file, and with ``n_saved=1`` it can be the only checkpoint. :class:`AtomicCheckpointSaver` writes every file to a
temporary file in the same folder and renames it, so the previous checkpoint is removed only once the new one is
complete. :class:`CheckedCheckpointLoader` checks ``model_path`` and ``--resume_from`` before the run starts, and
:class:`EpochSeed` makes a resumed run draw what the uninterrupted one would have drawn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.data.utils import set_rnd
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import min_version, optional_import, set_determinism

from ..errors import CheckpointError
from ..sam.checkpoint import read_checkpoint

DiskSaver, _ = optional_import("ignite.handlers", "0.4.11", min_version, "DiskSaver")
Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["AtomicCheckpointSaver", "CheckedCheckpointLoader", "EpochSeed"]

logger = logging.getLogger(__name__)


class _AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` with ``atomic=True`` and, like MONAI's, an optional fixed file name. Ignite removes the
    checkpoint to drop *before* it writes the new one; here the removal waits until the new file is complete."""

    def __init__(self, dirname: str, filename: str | None = None, report: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self.report = report
        self._to_remove: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        name = self.filename or filename
        super().__call__(checkpoint=checkpoint, filename=name, metadata=metadata)
        if self.report:  # where the model went, so that nobody has to guess
            logger.info(f"{self.report}: {Path(self.dirname).resolve() / name}")
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
            "_final_checkpoint": (kwargs.get("final_filename"), "final model written to"),
            "_key_metric_checkpoint": (kwargs.get("key_metric_filename"), "best model so far (key metric) written to"),
            "_interval_checkpoint": (None, None),
        }
        for attr, (filename, report) in fixed.items():
            checkpoint = getattr(self, attr, None)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(str(save_dir), filename, report)

    def attach(self, engine) -> None:
        super().attach(engine)
        self._engine = engine

    def state_dict(self) -> dict:
        """What a resumed training needs to go on choosing the best model: the scores of the files kept so far (with
        a fresh saver, the first validation after resuming would replace ``model.pt`` whatever its score), and the
        best metric and its epoch as the evaluator logs and reports them."""
        checkpoint = getattr(self, "_key_metric_checkpoint", None)
        state: dict = {"key_metric": dict(checkpoint.state_dict()) if checkpoint is not None else {}}
        engine = getattr(self, "_engine", None)
        if engine is not None and hasattr(engine.state, "best_metric"):
            state["best_metric"] = [float(engine.state.best_metric), int(engine.state.best_metric_epoch)]
        return state

    def load_state_dict(self, state: Mapping) -> None:
        checkpoint = getattr(self, "_key_metric_checkpoint", None)
        if checkpoint is not None and state.get("key_metric"):
            checkpoint.load_state_dict(state["key_metric"])
        engine = getattr(self, "_engine", None)
        if engine is not None and state.get("best_metric"):  # older checkpoints lack it: the evaluator starts afresh
            engine.state.best_metric, engine.state.best_metric_epoch = (
                float(state["best_metric"][0]),
                int(state["best_metric"][1]),
            )


class EpochSeed:
    """Seed every epoch from ``(seed, epoch)``: the global generators (shuffling, dropout, DataLoader workers) and the
    random transforms of ``dataset`` (MONAI seeds them once, when the DataLoader is built, when it has no workers).
    A training resumed from the checkpoint of epoch ``k`` then draws exactly what the uninterrupted run drew in epoch
    ``k + 1`` onwards, and ends with the same weights.

    Args:
        seed: the run's seed.
        dataset: the training dataset (its transforms are re-seeded). Default ``None``.
    """

    def __init__(self, seed: int, dataset: Any = None) -> None:
        self.seed, self.dataset = int(seed), dataset

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        seed = (self.seed + 1_000_003 * engine.state.epoch) % (2**32)
        set_determinism(seed=seed)
        if self.dataset is not None:
            set_rnd(self.dataset, seed)


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that reads the file before the run starts, through our safe reader: a missing,
    empty, truncated, pickled or foreign file, or weights that do not fit the network, raise
    :class:`~monai_sam_adapt.errors.CheckpointError` naming the option (``model_path``, ``resume_from``), the file,
    what is wrong, and the newest complete checkpoint in the same folder when there is one.

    Args:
        load_path, load_dict, kwargs: as MONAI's ``CheckpointLoader``.
        option: how the file was given, for messages. Default ``"model_path"``.
    """

    def __init__(self, load_path: str, load_dict: dict, option: str = "model_path", **kwargs: Any) -> None:
        super().__init__(load_path, load_dict, **kwargs)
        self.option = option

    def attach(self, engine) -> None:
        path = Path(self.load_path)
        try:
            state = read_checkpoint(path, self.option)
        except CheckpointError as e:
            raise CheckpointError(f"{e}{self._hint(path)}") from None
        missing = [k for k in self.load_dict if not isinstance(state, Mapping) or k not in state]
        if missing and not (len(self.load_dict) == 1 and isinstance(state, Mapping)):  # MONAI: a bare state dict
            raise CheckpointError(
                f"{self.option} {str(path)!r} lacks {', '.join(map(str, missing))}: it is not a checkpoint of this "
                f"bundle.{self._hint(path)}"
            )
        super().attach(engine)

    def __call__(self, engine) -> None:
        try:
            super().__call__(engine)
        except CheckpointError:
            raise
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()
            raise CheckpointError(
                f"{self.option} {str(self.load_path)!r} does not fit this bundle's network: "
                f"{first[0][:300] if first else type(e).__name__}"
            ) from e

    def _hint(self, bad: Path) -> str:
        good = self._newest_good(bad)
        return f" The newest complete checkpoint beside it is {str(good)!r}." if good else ""

    def _newest_good(self, bad: Path) -> Path | None:
        if not bad.parent.is_dir():
            return None
        for p in sorted(bad.parent.glob("*.pt"), key=os.path.getmtime, reverse=True):
            if p.resolve() == bad.resolve():
                continue
            try:
                state = read_checkpoint(p)
            except CheckpointError:
                continue
            if isinstance(state, Mapping) and all(k in state for k in self.load_dict):
                return p
        return None
