"""Errors a MONAI Label request can cause, with the HTTP status the server answers them with."""

from __future__ import annotations

from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

__all__ = ["RequestError", "http_status"]


class RequestError(MONAILabelException):
    """A request the server cannot serve as sent (unknown image, unreadable upload, label of the wrong shape...).

    Carries its HTTP status (4xx); the message says which file or id and what is wrong.
    """

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(MONAILabelError.INVALID_INPUT, msg)
        self.status = int(status)


_STATUS = {MONAILabelError.INVALID_INPUT: 400, MONAILabelError.TRANSFORM_ERROR: 400}


def http_status(exc: MONAILabelException) -> int:
    """4xx for the client's mistakes (a ``RequestError``'s own status; 404 for a missing image or label; 400 for
    MONAI Label's ``INVALID_INPUT``, e.g. an unknown model), 500 otherwise."""
    from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)):
        return 404
    return _STATUS.get(getattr(exc, "error", None), 500)
