"""The ASGI app to run MONAI Label with:
``monailabel start_server ... --uvicorn_app monai_sam_adapt.serving.server:app``.

It is MONAI Label's own FastAPI app (``monailabel.app:app``) with three changes, each for a measured obstacle of
MONAI Label 0.8.5 under monai 1.6 / pydicom 3:

1. it starts: importing ``monai_sam_adapt.serving`` installs :func:`~.compat.install_pydicom_bridge` before
   MONAI Label imports ``pydicom-seg``;
2. a request the server cannot serve as sent (unknown model or image, unreadable upload, label of the wrong shape)
   is answered with a 4xx and its message, not an empty 500, and the server keeps serving;
3. the bundled OHIF viewer's files in sub-folders are served (MONAI Label builds their paths with ``os.pathsep``, so
   every ``/ohif/<folder>/<file>`` request got ``index.html``).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

import monailabel.endpoints  # the package's __init__ installed the pydicom bridge
from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse
from monailabel.app import app
from monailabel.config import settings
from monailabel.interfaces.exception import MONAILabelException

from .errors import http_status

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
