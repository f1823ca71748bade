"""The ASGI app to run MONAI Label with:
``monailabel start_server ... --uvicorn_app monai_sam_adapt.serving.server:app``.

It is MONAI Label's own FastAPI app (``monailabel.app:app``) with four changes, each for a measured obstacle of
MONAI Label 0.8.5 under monai 1.6 / pydicom 3:

1. it starts: importing ``monai_sam_adapt.serving`` installs :func:`~.compat.install_pydicom_bridge` before
   MONAI Label imports ``pydicom-seg``;
2. a request the server cannot serve as sent (unknown model or image, unreadable upload, label of the wrong shape)
   is answered with a 4xx and its message, not an empty 500, and the server keeps serving;
3. the bundled OHIF viewer's files in sub-folders are served (MONAI Label builds their paths with ``os.pathsep``, so
   every ``/ohif/<folder>/<file>`` request got ``index.html``);
4. every request passes :class:`~.guard.RequestGuard` first: remote clients only with authentication or a declared
   trusted network, identifiers that are plain names, bodies within ``--conf max_upload_mb`` (413 otherwise), and
   upload copies in a folder of the request's own, removed when it ends (MONAI Label left them in the system's
   temporary folder whenever a request failed).
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path

import monailabel.endpoints  # the package's __init__ installed the pydicom bridge
import monailabel.endpoints.datastore
import monailabel.endpoints.infer
import monailabel.endpoints.model
import monailabel.endpoints.session
from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse
from monailabel.app import app
from monailabel.config import settings
from monailabel.datastore.utils import convert
from monailabel.interfaces.exception import MONAILabelException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from .errors import http_status
from .guard import DEFAULT_MAX_UPLOAD_MB, RequestGuard, access_mode

logger = logging.getLogger(__name__)

__all__ = ["app", "ohif_file"]

OHIF_DIR = Path(monailabel.endpoints.__file__).resolve().parent / "static" / "ohif"
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


@app.exception_handler(MONAILabelException)
async def _monailabel_error(request: Request, exc: MONAILabelException) -> JSONResponse:
    return JSONResponse(status_code=http_status(exc), content={"detail": exc.msg, "error": str(exc.error.value)})


def ohif_file(path: str, root: Path = OHIF_DIR) -> Path:
    """The file a browser asked for under ``/ohif/``; ``index.html`` for the viewer's own routes (``viewer?...``).
    Never a file outside ``root``."""
    root = root.resolve()
    target = (root / path).resolve() if path else root / "index.html"
    if not target.is_relative_to(root) or not target.is_file():
        target = root / "index.html"
    return target


def _replace_ohif_route() -> None:
    prefix = settings.MONAI_LABEL_API_STR
    route_path = f"{prefix}/ohif/{{path:path}}"
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != route_path]

    @app.get(route_path, include_in_schema=False)
    async def _ohif(path: str) -> FileResponse:
        file = ohif_file(path)
        return FileResponse(file, media_type=mimetypes.guess_type(file.name)[0] or "application/octet-stream")


_replace_ohif_route()


def _install_guard() -> None:
    conf = settings.MONAI_LABEL_APP_CONF or {}
    limit = float(conf.get("max_upload_mb", DEFAULT_MAX_UPLOAD_MB))
    RequestGuard.install(
        [
            monailabel.endpoints.datastore,
            monailabel.endpoints.infer,
            monailabel.endpoints.model,
            monailabel.endpoints.session,
            convert,  # OHIF's .bin labels and DICOM series converted for a request
        ]
    )
    # Starlette's body limit (inside the guard) cuts streamed bodies that carry no Content-Length
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=int(limit * 2**20))
    app.add_middleware(RequestGuard, max_upload_mb=limit)
    mode = access_mode()
    logger.info(
        {
            "authentication": "access: MONAI Label authentication (MONAI_LABEL_AUTH_ENABLE), realm "
            f"{settings.MONAI_LABEL_AUTH_REALM_URI}",
            "trusted": "access: TRUSTED NETWORK, no authentication: any client that reaches this server may use it",
            "loopback": "access: clients on this machine only (loopback); remote clients are refused",
        }[mode]
        + f"; uploads up to {limit:g} MiB"
    )


_install_guard()
