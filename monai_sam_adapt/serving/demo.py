"""A throw-away serving stack for demos, benchmarks and tests: MONAI Label on a free loopback port with a scratch copy
of our app, DICOM upload to Orthanc, and OHIF in headless Chromium (needs ``playwright``, which only drives the Debian
``chromium`` binary; no browser is downloaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from .launch import APP_DIR
from .orthanc import free_port, start_orthanc, wait_http

__all__ = [
    "CHROMIUM_ARGS",
    "label_server_command",
    "screenshot_study",
    "served_series",
    "start_label_server",
    "upload_instances",
]


def label_server_command(
    app: str | Path,
    studies: str,
    port: int,
    models: str = "all",
    bundles: str | Path | None = None,
    conf: dict[str, str] | None = None,
) -> list[str]:
    """The README's one command, ``python -m monai_sam_adapt.serving``, serving ``models`` (and the bundles of folder
    ``bundles``, and other ``--conf`` pairs) on 127.0.0.1 with the app folder ``app``: the server the tests start is
    the one users start."""
    pairs = {"models": models, **({"bundles": str(bundles)} if bundles else {}), **(conf or {})}
    conf = [x for k, v in pairs.items() for x in ("--conf", k, str(v))]
    return [
        sys.executable,
        "-m",
        "monai_sam_adapt.serving",
        "--studies",
        studies,
        "--app",
        str(app),
        "--port",
        str(port),
    ] + conf


def start_label_server(
    studies: str,
    workdir: str | Path,
    models: str = "all",
    bundles: str | Path | None = None,
    timeout: float = 180.0,
    conf: dict[str, str] | None = None,
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
            label_server_command(app, studies, port, models, bundles, conf),
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


def upload_instances(orthanc: str, files) -> set[str]:
    """Store DICOM files in Orthanc (its REST ``/instances``); the SeriesInstanceUIDs they belong to."""
    import pydicom

    series = set()
    for f in files:
        req = urllib.request.Request(
            f"{orthanc}/instances",
            data=Path(f).read_bytes(),
            method="POST",
            headers={"Content-Type": "application/dicom"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
        series.add(str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID))
    return series


#: Headless Chromium on a machine without network: no background connections, no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _settle(page, first_wait: float = 1.0, interval: float = 1.5, timeout: float = 60.0) -> bytes:
    """A screenshot once the page stops changing (two in a row alike), so a slow machine still shows the drawn image."""
    time.sleep(first_wait)
    last = page.screenshot()
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(interval)
        shot = page.screenshot()
        if shot == last:
            return shot
        last = shot
    return last


def screenshot_study(
    server: str,
    study_uid: str,
    out: str | Path,
    show_seg: str | None = "monai_sam_adapt",
    chromium: str = "/usr/bin/chromium",
    size: tuple[int, int] = (1400, 900),
    timeout_s: float = 120.0,
) -> tuple[Path, Path | None]:
    """Open ``<server>/ohif/viewer?StudyInstanceUIDs=<study_uid>`` and save a screenshot of the first image.

    With ``show_seg``, the SEG series whose description contains it is then opened in the viewport (double-click
    on its entry, "Yes" to OHIF's question) and a second screenshot taken with the segmentation overlaid.
    Returns ``(plain, with_seg)`` paths (``out`` with suffixes ``-plain`` and ``-seg``; ``with_seg`` is ``None``
    without ``show_seg``).
    """
    from playwright.sync_api import sync_playwright

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plain, seg = out.with_name(out.stem + "-plain.png"), out.with_name(out.stem + "-seg.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(f"{server}/ohif/viewer?StudyInstanceUIDs={study_uid}", wait_until="networkidle")
            page.locator("canvas").first.wait_for(state="visible")
            _settle(page)  # the first image is drawn after the canvas appears
            try:  # OHIF's "investigational use" banner covers the bottom of the viewport
                page.get_by_text("Confirm and Hide").first.click(timeout=5000)
            except Exception:  # noqa: BLE001 - not shown by every OHIF build
                pass
            plain.write_bytes(_settle(page))
            if not show_seg:
                return plain, None
            page.get_by_text(show_seg).first.dblclick()
            page.get_by_role("button", name="Yes").click()
            seg.write_bytes(_settle(page, first_wait=2.0))
            return plain, seg
        finally:
            browser.close()


@contextmanager
def served_series(files, workdir: str | Path, models: str = "all", conf: dict[str, str] | None = None):
    """Orthanc on loopback holding the DICOM ``files`` (one series) and our MONAI Label server reading it over
    DICOMweb; yields ``(series UID, server URL, Orthanc URL, server process, server start-up seconds)`` and stops
    both afterwards."""
    workdir = Path(workdir)
    port = free_port()
    orthanc = start_orthanc(workdir / "orthanc", port)
    server = None
    try:
        base = f"http://127.0.0.1:{port}"
        (series,) = upload_instances(base, files)
        t0 = time.time()
        server, url = start_label_server(f"{base}/dicom-web", workdir / "label", models=models, conf=conf)
        yield series, url, base, server, time.time() - t0
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        orthanc.terminate()
        orthanc.wait(30)
