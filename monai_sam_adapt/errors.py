"""The package's errors, in one place: each message names the file or the name at fault and what is wrong.

Serving's HTTP error (:class:`monai_sam_adapt.serving.errors.RequestError`, a MONAI Label exception carrying a status
code) lives with serving, which is an optional extra.
"""

from __future__ import annotations

import re

__all__ = ["CheckpointError", "InputError", "UnknownLabelError", "find_error"]


class InputError(ValueError):
    """Bad input data; the message names the file and what is wrong with it."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the architecture; the message names the file."""


class UnknownLabelError(KeyError):
    """A label name the model was not built (trained) for."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0])


#: The errors whose message is meant for the user as it stands (file, problem, what to do).
USER_ERRORS = (InputError, CheckpointError, UnknownLabelError)
_IN_TEXT = re.compile(r"monai_sam_adapt\.errors\.(InputError|CheckpointError|UnknownLabelError): (.+)")


def find_error(e: BaseException | None, types: tuple[type[BaseException], ...] = USER_ERRORS) -> BaseException | None:
    """Our error behind ``e``: MONAI wraps a transform's error in ``RuntimeError`` (twice), ignite and the config
    parser wrap it again, and a DataLoader worker sends it back only as the text of its traceback. Returns the error
    (rebuilt from that text when needed), or ``None`` when there is none of ``types``."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, types):
            return e
        found = _IN_TEXT.findall(str(e))
        for name, message in reversed(found):
            cls = {c.__name__: c for c in USER_ERRORS}[name]
            if issubclass(cls, types):
                return cls(message)
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
