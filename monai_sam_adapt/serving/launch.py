"""Start MONAI Label with our app, the way the README's command does (used by the tests and the serving demo)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .orthanc import free_port, wait_http

__all__ = ["APP_DIR", "label_server_command", "server_command", "start_label_server"]

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


def label_server_command(
    app: str | Path, studies: str, port: int, models: str = "all", bundles: str | Path | None = None
) -> list[str]:
    """:func:`server_command` bound to 127.0.0.1 serving ``models`` (and the bundles of folder ``bundles``)."""
    return server_command(
        studies, app, "127.0.0.1", port, {"models": models, **({"bundles": bundles} if bundles else {})}
    )


def start_label_server(
    studies: str, workdir: str | Path, models: str = "all", bundles: str | Path | None = None, timeout: float = 180.0
) -> tuple[subprocess.Popen, str]:
    """Start the server on a free loopback port with a copy of our app folder under ``workdir`` (MONAI Label writes
    ``model/``, ``logs/`` into its app folder); wait for ``/info/``. Returns the process and the server URL; the log
    is ``workdir/server.log``."""
    workdir = Path(workdir)
    app = workdir / "app"
    app.mkdir(parents=True, exist_ok=True)
    shutil.copy(APP_DIR / "main.py", app / "main.py")
    port = free_port()
    env = {
        **os.environ,
        "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(workdir / "cache"),
        "PYTHONUNBUFFERED": "1",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    }
    log = workdir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            label_server_command(app, studies, port, models, bundles),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/info/", timeout=timeout, proc=proc)
    except Exception as e:
        proc.kill()
        raise RuntimeError(f"MONAI Label did not start ({e}); log {log}:\n{log.read_text()[-4000:]}") from e
    return proc, f"http://127.0.0.1:{port}"
