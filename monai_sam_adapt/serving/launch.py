"""The command that starts MONAI Label with our app (``python -m monai_sam_adapt.serving``; the tests and the demo
start it through the same function)."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["APP_DIR", "server_command"]

#: The MONAI Label app folder shipped with the package.
APP_DIR = Path(__file__).resolve().parents[1] / "apps" / "monailabel"


def server_command(
    studies: str, app: str | Path = APP_DIR, host: str = "127.0.0.1", port: int = 8000, conf: dict | None = None
) -> list[str]:
    """``monailabel start_server`` run by this interpreter (``python -m monailabel.main``, not whatever ``monailabel``
    is first on PATH) with our uvicorn app (:mod:`.server`: the pydicom 3 bridge, 4xx errors, OHIF route)."""
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", studies]
    for key, value in (conf or {}).items():
        cmd += ["--conf", str(key), str(value)]
    return cmd + ["--host", host, "--port", str(port), "--uvicorn_app", "monai_sam_adapt.serving.server:app"]
