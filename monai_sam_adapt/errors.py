"""The package's errors, in one place: each message names the file or the name at fault and what is wrong.

Serving's HTTP error (:class:`monai_sam_adapt.serving.errors.RequestError`, a MONAI Label exception carrying a status
code) lives with serving, which is an optional extra.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "InputError", "UnknownLabelError"]


class InputError(ValueError):
    """Bad input data; the message names the file and what is wrong with it."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the architecture; the message names the file."""


class UnknownLabelError(KeyError):
    """A label name the model was not built (trained) for."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0])
