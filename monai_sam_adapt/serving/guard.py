"""What a request may name, send and cost: identifiers confined to their folders, uploads bounded and removed after
their request, remote clients only with authentication, inference cut at a time limit.

MONAI Label 0.8.5 takes request values as path parts (an image id or label tag of ``..`` segments, or an absolute
tag, was written outside the studies folder), leaves an upload's temporary copy behind when its request fails, and
has no upload size limit. This module closes those holes around it, in one place:

- :func:`check_name` / :func:`confined`: a request's identifier is one plain name, and a path built from it resolves
  inside its folder (symbolic links included); used by our datastores (:mod:`.datastore`) and app (:mod:`.app`).
- :class:`RequestGuard`: the ASGI middleware our server (:mod:`.server`) runs in front of MONAI Label's routes: it
  refuses remote clients without authentication, identifiers in query strings and paths that are not plain names,
  archive uploads, and bodies above the size limit (413, before they reach the disk), and gives each request its own
  upload folder (:func:`request_tempfile`), removed when the request ends, answered or refused.
- :func:`deadline`: inference stopped, its memory freed, once it runs past the server's time limit.

Settings come from the app's ``--conf`` pairs (``max_upload_mb``, ``infer_timeout_s``) and the environment
(:data:`TRUSTED_NETWORK_ENV`, MONAI Label's ``MONAI_LABEL_AUTH_ENABLE``).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import ipaddress
import json
import os
import re
import shutil
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import torch

from .errors import RequestError

__all__ = [
    "DEFAULT_INFER_TIMEOUT_S",
    "DEFAULT_MAX_UPLOAD_MB",
    "IDENTIFIER_PARAMS",
    "NAMED_ROUTES",
    "TRUSTED_NETWORK_ENV",
    "InferenceTimeout",
    "RequestGuard",
    "TimeLimitedTask",
    "access_mode",
    "check_name",
    "confined",
    "deadline",
    "inside",
    "is_loopback",
    "request_tempfile",
    "upload_root",
]

#: Environment variable that says every machine able to reach the server may use it without authentication
#: (set by ``python -m monai_sam_adapt.serving --trusted_network``).
TRUSTED_NETWORK_ENV = "MONAI_SAM_ADAPT_TRUSTED_NETWORK"
#: Default upload limit: a large CT series as one NIfTI (1,000 slices of 512 x 512 int16 are 500 MiB) with room.
DEFAULT_MAX_UPLOAD_MB = 2048
#: Default time one inference may run (MONAI Label's own default for its thread-pool inference).
DEFAULT_INFER_TIMEOUT_S = 600.0
#: Query parameters that name a datastore object, a tag or a session: each must be a plain name.
IDENTIFIER_PARAMS = ("image", "id", "label", "tag", "label_tag", "session_id", "model")

#: Routes whose last path segment names something (``/infer/{model}``, ``/session/{session_id}``...): the
#: parameter it is, checked with :func:`check_name`. Longest prefixes first.
NAMED_ROUTES = (
    ("/model/info/", "model"),
    ("/batch/infer/", "model"),
    ("/infer/wsi_v2/", "model"),
    ("/infer/wsi/", "model"),
    ("/infer/", "model"),
    ("/train/", "model"),
    ("/model/", "model"),
    ("/session/", "session_id"),
    ("/scoring/", "method"),
    ("/activelearning/", "strategy"),
)

_DRIVE = re.compile(r"^[A-Za-z]:")


def check_name(value: Any, param: str) -> str:
    """``value`` if it is one plain file-name part, else a 400 naming ``param``.

    Refused: a non-string or empty value, ``.`` and ``..``, a leading dot, path separators (``/``, ``\\``), a drive
    letter or any ``:``, NUL and other control characters, ``%`` (still-encoded text), more than 255 characters.
    """
    if not isinstance(value, str) or not value:
        raise RequestError(f"parameter {param!r}: {value!r} is not a name (expected a non-empty string).", 400)
    why = None
    if value.startswith("."):  # ".", ".." and hidden names
        why = "it starts with a dot"
    elif "/" in value or "\\" in value:
        why = "it contains a path separator"
    elif _DRIVE.match(value) or ":" in value:
        why = "it contains ':' (a drive letter or stream name)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        why = "it contains a NUL or control character"
    elif "%" in value:
        why = "it contains '%' (a request is percent-decoded once, never twice)"
    elif len(value) > 255:
        why = f"it has {len(value)} characters (at most 255)"
    if why:
        raise RequestError(f"parameter {param!r}: {value[:80]!r} is not a plain name: {why}.", 400)
    return value


def inside(path: str | os.PathLike, *roots: str | os.PathLike) -> bool:
    """Whether ``path``, symbolic links resolved, is one of ``roots`` or lies below one of them."""
    real = Path(os.path.realpath(path))
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def confined(root: str | os.PathLike, *parts: str, param: str) -> Path:
    """``root/parts...`` (an absolute part replaces what precedes it) with symbolic links resolved; a 400 naming
    ``param`` when it resolves outside ``root``."""
    target = Path(os.path.realpath(os.path.join(root, *parts)))
    if not inside(target, root):
        raise RequestError(
            f"parameter {param!r}: {os.path.join(*parts)!r} resolves outside the folder it belongs in "
            "('..' or a symbolic link points out of it).",
            400,
        )
    return target


# ---------------------------------------------------------------------------------------------------------------
# per-request upload folders

_request_dir: contextvars.ContextVar[str | None] = contextvars.ContextVar("monai_sam_adapt_upload_dir", default=None)
_root_lock = threading.Lock()
_root: str | None = None


def upload_root() -> str:
    """This server's folder for request uploads (created once, private to this user, removed at the server's shutdown
    and at exit); each request gets a folder inside it that is removed when the request ends."""
    global _root
    with _root_lock:
        if _root is None or not os.path.isdir(_root):
            _root = tempfile.mkdtemp(prefix=f"monai_sam_adapt-uploads-{os.getpid()}-")
            atexit.register(shutil.rmtree, _root, True)
        return _root


def _checked_suffix(suffix: Any) -> Any:
    if suffix and any(c in str(suffix) for c in ("/", "\\", "\x00")) or len(str(suffix or "")) > 64:
        raise RequestError(f"parameter 'file': upload file name ending {str(suffix)[:80]!r} is not a plain name.", 400)
    return suffix


class _RequestTempfile(types.ModuleType):
    """``tempfile`` as MONAI Label's endpoints see it: their upload copies go to the request's own folder (removed
    when the request ends, answered or refused) and their file-name suffixes are checked."""

    def __init__(self) -> None:
        super().__init__("tempfile", "tempfile with uploads in the request's own folder (monai_sam_adapt)")

    def __getattr__(self, name: str) -> Any:
        return getattr(tempfile, name)

    @staticmethod
    def NamedTemporaryFile(*args: Any, suffix: Any = None, dir: Any = None, **kwargs: Any):  # noqa: N802
        return tempfile.NamedTemporaryFile(
            *args, suffix=_checked_suffix(suffix), dir=dir or _request_dir.get() or upload_root(), **kwargs
        )

    @staticmethod
    def TemporaryDirectory(*args: Any, suffix: Any = None, dir: Any = None, **kwargs: Any):  # noqa: N802
        return tempfile.TemporaryDirectory(
            *args, suffix=_checked_suffix(suffix), dir=dir or _request_dir.get() or upload_root(), **kwargs
        )


#: The ``tempfile`` MONAI Label's upload endpoints are given (:meth:`RequestGuard.install`).
request_tempfile = _RequestTempfile()


# ---------------------------------------------------------------------------------------------------------------
# remote access

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if not host:
        return False
    if host.strip("[]").lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def access_mode(environ: dict[str, str] | None = None) -> str:
    """Who may use the server: ``"authentication"`` (MONAI Label's, ``MONAI_LABEL_AUTH_ENABLE`` in the environment
    or MONAI Label's ``.env``), ``"trusted"`` (:data:`TRUSTED_NETWORK_ENV`: any client that reaches it) or
    ``"loopback"`` (clients on this machine only). ``environ``: read these instead of the process's settings."""
    if environ is None:
        from monailabel.config import settings

        env, auth = os.environ, settings.MONAI_LABEL_AUTH_ENABLE
    else:
        env, auth = environ, _truthy(environ.get("MONAI_LABEL_AUTH_ENABLE"))
    if auth:
        return "authentication"
    if _truthy(env.get(TRUSTED_NETWORK_ENV)):
        return "trusted"
    return "loopback"


# ---------------------------------------------------------------------------------------------------------------
# inference time limit


class InferenceTimeout(RuntimeError):
    """Inference ran past the server's time limit (raised inside the network, so its tensors are freed)."""


_deadline = threading.local()
_hook_lock = threading.Lock()
_hook_handle = None


def _check_deadline(module: torch.nn.Module, args: Any) -> None:
    limit = getattr(_deadline, "at", None)
    if limit is not None and time.monotonic() > limit[0]:
        raise InferenceTimeout(f"ran past {limit[1]:g} s and was stopped at a {type(module).__name__} layer")


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Within this block, on this thread, every ``torch.nn.Module`` call after ``seconds`` raises
    :class:`InferenceTimeout`: the computation stops at its next layer and unwinds, freeing its tensors.
    ``None`` or ``<= 0``: no limit. :class:`TimeLimitedTask` applies it on the thread that runs the inference."""
    global _hook_handle
    if not seconds or seconds <= 0:
        yield
        return
    with _hook_lock:
        if _hook_handle is None:
            _hook_handle = torch.nn.modules.module.register_module_forward_pre_hook(_check_deadline)
    previous = getattr(_deadline, "at", None)
    _deadline.at = (time.monotonic() + float(seconds), float(seconds))
    try:
        yield
    finally:
        _deadline.at = previous


class TimeLimitedTask:
    """An inference task whose :meth:`segment` runs within :func:`deadline` of ``time_limit_s`` seconds (set by the
    app; ``None``: no limit), on whichever thread MONAI Label calls it (the request's own by default, its thread
    pool with ``MONAI_LABEL_INFER_CONCURRENCY >= 0``)."""

    time_limit_s: float | None = None

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        with deadline(self.time_limit_s):
            return self.segment(request)

    def segment(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# the middleware


def _segments(path: str) -> Iterator[str]:
    for seg in path.split("/"):
        yield seg
        decoded = seg
        for _ in range(3):  # what a proxy or the next server would make of %2e%2e or %252e%252e
            nxt = unquote(decoded)
            if nxt == decoded:
                break
            decoded = nxt
            yield from decoded.replace("\\", "/").split("/")


class RequestGuard:
    """ASGI middleware in front of MONAI Label's routes (added by :mod:`.server`).

    For every HTTP request, in this order:

    1. a client not on loopback gets 403 unless MONAI Label's authentication is on or the network is declared
       trusted (:func:`access_mode`);
    2. a path segment ``.``/``..`` (also percent-encoded, once or twice), or with a backslash or NUL, gets 400, and
       so does a model, session, method or strategy name in the path (:data:`NAMED_ROUTES`) that is not a plain name;
    3. a query parameter of :data:`IDENTIFIER_PARAMS` that is not a plain name (:func:`check_name`) gets 400 naming
       it; ``uncompress`` on a session upload gets 400 (archive members could land anywhere);
    4. a body whose ``Content-Length`` is above ``max_upload_mb`` gets 413 naming the limit, before it is read (a
       streamed body without one is cut at the same size by Starlette's ``RequestBodyLimitMiddleware``, which
       :mod:`.server` puts inside this guard);
    5. MONAI Label's upload copies go to a folder of the request's own (:data:`request_tempfile`), removed when the
       request ends, whatever its answer.

    Args:
        app: the ASGI app (MONAI Label's FastAPI app).
        max_upload_mb: largest request body in MiB. Default :data:`DEFAULT_MAX_UPLOAD_MB`.
        mode: :func:`access_mode`'s answer; ``None``: read from the environment at each request.
    """

    def __init__(self, app: Any, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, mode: str | None = None) -> None:
        self.app = app
        if max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}.")
        self.max_bytes = int(max_upload_mb * 2**20)
        self.mode = mode

    @staticmethod
    def install(modules: list[Any]) -> None:
        """Give MONAI Label's endpoint ``modules`` :data:`request_tempfile` as their ``tempfile``."""
        for module in modules:
            if getattr(module, "tempfile", None) is tempfile:
                module.tempfile = request_tempfile

    def refusal(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        """``(status, message)`` for a request refused before it runs, else ``None``."""
        client = (scope.get("client") or (None,))[0]
        mode = self.mode or access_mode()
        if mode == "loopback" and client is not None and not is_loopback(client):
            return 403, (
                f"this server takes requests from this machine only; {client} is remote. Remote use needs "
                "MONAI Label's authentication (MONAI_LABEL_AUTH_ENABLE) or an authenticating reverse proxy, "
                "or start it with --trusted_network (docs/serving.md)."
            )
        path = scope.get("path", "")
        for seg in _segments(path):
            if seg in (".", "..") or "\\" in seg or "\x00" in seg:
                return 400, f"path {path!r}: a segment {seg!r} is not a plain name."
        for prefix, param in NAMED_ROUTES:
            name = path[len(prefix) :] if path.startswith(prefix) else ""
            if name and "/" not in name:
                try:
                    check_name(name, param)
                except RequestError as e:
                    return 400, e.msg
                break
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            return 400, "the query string is not valid UTF-8."
        for key, value in pairs:
            if key in IDENTIFIER_PARAMS and value:  # empty: absent (MONAI Label's defaults apply)
                try:
                    check_name(value, key)
                except RequestError as e:
                    return 400, e.msg
            if key == "uncompress" and _truthy(value):
                return 400, "parameter 'uncompress': archives are not accepted; upload the image files themselves."
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    return 400, "header Content-Length is not a number."
                if size > self.max_bytes:
                    return 413, (
                        f"the upload ({size / 2**20:.1f} MiB) is larger than this server's limit of "
                        f"{self.max_bytes / 2**20:g} MiB (--conf max_upload_mb)."
                    )
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # at shutdown remove the upload folder (uvicorn ends on the signal itself)

            async def lifespan_send(message: dict[str, Any]) -> None:
                if message.get("type") == "lifespan.shutdown.complete" and _root is not None:
                    shutil.rmtree(_root, ignore_errors=True)
                await send(message)

            await self.app(scope, receive, lifespan_send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            await self._answer(send, *refused)
            return
        folder = tempfile.mkdtemp(dir=upload_root())
        token = _request_dir.set(folder)
        try:
            await self.app(scope, receive, send)
        finally:
            _request_dir.reset(token)
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    async def _answer(send: Any, status: int, message: str) -> None:
        body = json.dumps({"detail": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
